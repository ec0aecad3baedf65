"""Streaming tagging: live audio in, scores and events out, in real time and without torch.

The pipeline, one small module per stage::

    source (microphone | file | raw PCM on stdin)   sources.py, capture.py, ring.py
      -> mono + streaming resampling to 32 kHz        resampler.py
      -> sliding windows + incremental log-mel        windows.py, incremental.py
      -> bounded queue + inference worker             worker.py
      -> smoothing, thresholds, hysteresis events     postprocess.py, events.py
      -> sinks: terminal, JSONL, MQTT, WAV snippets   sinks/
    wired together (signals, shutdown, stats) in      listener.py
"""
