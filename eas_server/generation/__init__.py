"""Generation: encoder-decoder (Whisper-shaped) models served with iteration-level batching."""
