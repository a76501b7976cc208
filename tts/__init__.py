"""Text-to-speech backends. Each yields 16 kHz mono float32 audio for one text."""
