"""Answering one question: the orchestrator's turn (retrieve, prompt, generate, cite, record),
the prompt templates, the generators (local GGUF, TGI, vLLM) and the message types the faces
exchange with it."""
