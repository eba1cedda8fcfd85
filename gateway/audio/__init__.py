"""Audio signal processing for processors: streaming resampling and voice activity detection.

Owns: sample-rate conversion with state (`resample`) and local speech detection (`vad`).
Never: sockets, tasks, clocks. Everything here is synchronous and works on PCM16 mono bytes.
"""
