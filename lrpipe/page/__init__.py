"""``pipe report``: a run, a chain, an evaluation or a whole study as one offline HTML page."""

from lrpipe.page.build import build_report, collect_page

__all__ = ["build_report", "collect_page"]
