"""MuseTalk model code: UNet, VAE, whisper-tiny encoder, weight loading, the inference worker.

Importing the package is cheap; torch and diffusers load with the submodules.
"""
