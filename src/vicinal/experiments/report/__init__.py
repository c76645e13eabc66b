"""Reports from saved results: figures (:mod:`.plots`), paired statistics (:mod:`.stats`),
Markdown and HTML (:mod:`.report`, with the Jinja2 template in ``templates/``)."""

__all__: list[str] = []
