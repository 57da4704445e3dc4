"""The ext-plugin wire protocol: frames and FlatBuffers messages, knowing nothing of plugins."""
