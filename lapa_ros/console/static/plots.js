// Live plots on plain canvases (no library): time series over the last minute and the
// end-effector path seen from above.
"use strict";

const Plots = (() => {
  const AXES = [["dx", "#e6194b"], ["dy", "#3cb44b"], ["dz", "#4363d8"],
                ["droll", "#f58231"], ["dpitch", "#911eb4"], ["dyaw", "#46f0f0"], ["gripper", "#bbbbbb"]];

  function frame(ctx, w, h, yMin, yMax, unit, zeroY) {
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#333"; ctx.fillStyle = "#888"; ctx.font = "10px monospace";
    if (zeroY >= 0 && zeroY <= h) { ctx.beginPath(); ctx.moveTo(0, zeroY); ctx.lineTo(w, zeroY); ctx.stroke(); }
    ctx.fillText(`${fmt(yMax)} ${unit}`, 2, 10); ctx.fillText(`${fmt(yMin)} ${unit}`, 2, h - 3);
  }

  function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(1) : v.toPrecision(2); }

  function range(values, minSpan) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!isFinite(lo)) { lo = -minSpan; hi = minSpan; }
    if (hi - lo < minSpan) { const c = (hi + lo) / 2; lo = c - minSpan / 2; hi = c + minSpan / 2; }
    return [lo, hi];
  }

  // series: [{label, color, points: [[t, v], ...]}]; x is time over the last windowS seconds
  function timeSeries(canvas, series, now, windowS, unit, minSpan) {
    const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    const all = series.flatMap(s => s.points.map(p => p[1]));
    const [lo, hi] = range(all, minSpan);
    const x = t => w * (1 - (now - t) / windowS), y = v => h - 4 - (h - 16) * (v - lo) / (hi - lo);
    frame(ctx, w, h, lo, hi, unit, y(0));
    series.forEach((s, i) => {
      ctx.strokeStyle = s.color; ctx.beginPath();
      s.points.forEach(([t, v], j) => (j ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.stroke();
      if (s.label) { ctx.fillStyle = s.color; ctx.fillText(s.label, w - 60, 12 + 11 * i); }
    });
  }

  function actions(canvas, steps, now, windowS) {
    // translation in mm and rotation in mrad per step, gripper target x10 (0 closed .. 10 open)
    const scale = [1e3, 1e3, 1e3, 1e3, 1e3, 1e3, 10];
    const series = AXES.map(([label, color], i) => ({label, color,
      points: steps.map(s => [s.t, s.action[i] * scale[i]])}));
    timeSeries(canvas, series, now, windowS, "mm|mrad", 2);
  }

  function latency(canvas, steps, now, windowS) {
    const points = steps.filter(s => s.latency_ms !== null).map(s => [s.t, s.latency_ms]);
    timeSeries(canvas, [{label: "latency", color: "#ffe119", points}], now, windowS, "ms", 10);
  }

  function rate(canvas, steps, now, windowS) {
    // executed commands per second, one point per second of the window
    const counts = new Map();
    for (const s of steps) { const k = Math.floor(s.t); counts.set(k, (counts.get(k) || 0) + 1); }
    const points = [];
    for (let k = Math.floor(now - windowS) + 1; k < Math.floor(now); k++) points.push([k + 0.5, counts.get(k) || 0]);
    timeSeries(canvas, [{label: "Hz", color: "#3cb44b", points}], now, windowS, "Hz", 5);
  }

  function path(canvas, steps) {
    // seen from above: base x points up the canvas, base y to the left
    const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    const pts = steps.filter(s => s.ee).map(s => s.ee);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "#888"; ctx.font = "10px monospace";
    if (!pts.length) { ctx.fillText("no motion yet", 8, 14); return; }
    const [xLo, xHi] = range(pts.map(p => p[0]), 0.1), [yLo, yHi] = range(pts.map(p => p[1]), 0.1);
    const span = Math.max(xHi - xLo, yHi - yLo), cx = (xHi + xLo) / 2, cy = (yHi + yLo) / 2;
    const s = (Math.min(w, h) - 20) / span;
    const u = p => w / 2 - (p[1] - cy) * s, v = p => h / 2 - (p[0] - cx) * s;
    ctx.fillText(`${(span * 100).toFixed(0)} cm across`, 4, h - 4);
    ctx.strokeStyle = "#4363d8"; ctx.beginPath();
    pts.forEach((p, j) => (j ? ctx.lineTo(u(p), v(p)) : ctx.moveTo(u(p), v(p))));
    ctx.stroke();
    const last = pts[pts.length - 1];
    ctx.fillStyle = "#e6194b"; ctx.beginPath(); ctx.arc(u(last), v(last), 4, 0, 2 * Math.PI); ctx.fill();
  }

  return {actions, latency, rate, path};
})();
