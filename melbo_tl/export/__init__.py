"""Export steering vectors to other tools, and import theirs: llama.cpp GGUF control vectors.

:mod:`~melbo_tl.export.layers` maps our hook names to llama.cpp's layer numbers,
:mod:`~melbo_tl.export.gguf_control_vector` reads and writes the file format,
:mod:`~melbo_tl.export.from_run` turns one entry of a run folder into a control vector (or says
why it cannot), and :mod:`~melbo_tl.export.method` reads a control vector back into a run folder.
"""
