"""Beam pipeline options for pipeline.generate: the defaults, and Beam's own flags told from typos."""

from __future__ import annotations

import difflib
import os

from pipeline import cli

LOCAL_RUNNERS = {None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}


class BeamFlagParser:
    """Beam's own parser of every pipeline option, to tell Beam's flags from typos."""

    def __init__(self):
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

        class Parser(_BeamArgumentParser):
            def error(self, message):
                raise cli.UsageError(f"Beam option: {message}")

        self.parser = Parser(allow_abbrev=False, add_help=False)
        classes = {}
        for cls in PipelineOptions.__subclasses__():
            classes.setdefault(str(cls), cls)
        for cls in classes.values():
            cls._add_argparse_args(self.parser)  # noqa: SLF001 - what PipelineOptions.get_all_options does

    def flags(self) -> list[str]:
        return [flag for action in self.parser._actions for flag in action.option_strings]  # noqa: SLF001

    def unknown(self, beam_args: list[str]) -> list[str]:
        _, unknown = self.parser.parse_known_args(beam_args)
        return unknown


def check_beam_args(beam_args: list[str], own_flags: list[str]):
    """Refuses anything that is neither one of our flags nor a Beam pipeline option, suggesting the closest."""
    beam = BeamFlagParser()
    for arg in beam.unknown(beam_args):
        if not arg.startswith("-"):
            raise cli.UsageError(f"unexpected argument {arg!r}; Beam options look like --name=value")
        flag = arg.split("=", 1)[0]
        close = difflib.get_close_matches(flag, own_flags + beam.flags(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see --help for this command's flags"
        raise cli.UsageError(f"unknown flag {flag} (neither this command's nor a Beam pipeline option){hint}")


def make_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    if not any(arg.startswith("--runner") for arg in beam_args):
        # FnApiRunner: Beam's local runner without the Prism download attempt, one process per core.
        beam_args = [
            "--runner=FnApiRunner",
            f"--direct_num_workers={os.cpu_count() or 1}",
            "--direct_running_mode=multi_processing",
            *beam_args,
        ]
    return PipelineOptions(beam_args)


def is_dry_run(options) -> bool:
    """--dry_run=True: plan (and for Dataflow, build the whole job) without writing anything."""
    from apache_beam.options.pipeline_options import TestOptions

    return str(options.view_as(TestOptions).dry_run).lower() in {"true", "1"}


def local_workers(options) -> int | None:
    """How many worker processes a local runner will use (None for a remote runner)."""
    from apache_beam.options.pipeline_options import DirectOptions

    if options.get_all_options().get("runner") not in LOCAL_RUNNERS:
        return None
    workers = options.view_as(DirectOptions).direct_num_workers
    return (os.cpu_count() or 1) if workers == 0 else max(1, workers or 1)
