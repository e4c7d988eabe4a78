"""The sections of ``bench.run``, one module each (§3-5 share a running ``ocrd run``, see
``live`` and ``running``)."""
