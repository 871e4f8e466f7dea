"""The console (`tidm console`): one web application for plant IT, maintenance teams and auditors.

Four server-rendered views (Fleet, Units, Evidence, Plans) over the same grants and read path as
`tidm serve`; every data view is a read recorded as FETCH. Assets (uPlot, CSS, a little JavaScript)
ship in the package: nothing is fetched from the internet at run time.
"""

from tidm.console.app import create_console
from tidm.console.config import ConsoleSection, FleetTarget
from tidm.console.downsample import Trend, downsample

__all__ = ["ConsoleSection", "FleetTarget", "Trend", "create_console", "downsample"]
