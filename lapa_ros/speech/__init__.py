"""Offline spoken commands: a JSGF grammar built from the task suite, a pocketsphinx recogniser
with confidence-based rejection, and energy-VAD utterance segmentation (microphone or WAV replay).

Imports nothing from ROS; `lapa_ros.speech_node` wires these to topics and services.
"""
