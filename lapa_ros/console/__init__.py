"""The operator console: a web page served from the robot side to watch, command and stop the robot.

`lapa console` (or `console:=true` in franka.launch.py / `lapa bringup`) starts the `lapa_console`
node (node.py): it listens to the camera, /lapa/status and /lapa/step, publishes instructions,
calls the policy node's Trigger services, and serves the page with FastAPI (app.py) on 127.0.0.1
unless an API key is given (policy_server/security.py's rules). Telemetry (telemetry.py) keeps the
last minute for the plots; recorder.py writes what the robot does as LeRobot v3 episodes; speech.py
runs uploaded push-to-talk audio through the same offline recogniser as `lapa_speech`. Every asset
of the page is in static/ and ships with the package: no CDN.
"""
