"""The sections of ``python -m benchmarks.gpu_check``: one module per section, plus the plan and the report.

:mod:`.plan` holds the sizes of a full (GPU) and a ``--smoke`` (CPU) run and the section runner;
:mod:`.train_steps`, :mod:`.losses`, :mod:`.inference`, :mod:`.serving` and :mod:`.quickstart`
measure; :mod:`.report` renders the Markdown.
"""
