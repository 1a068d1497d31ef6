"""Speech-to-text, agent (LLM) and text-to-speech providers behind one small interface each."""
