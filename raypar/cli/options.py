"""Command-line options made from the documented fields of :mod:`raypar.training.config`: every command that takes
a setting takes it with the same flag, type, choices and help."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..training.config import GROUPS, TrainConfig, key_of


def int_list(text: str) -> list[int]:
    """``1,2,4`` as a list of ints (an argparse type)."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas like 1,2,4, got {text!r}")
    return values


def int_or_word(text: str) -> int | str:
    """A number, or a word kept as it is (``--subnets auto``; the setting's own validation judges the word): an
    argparse type."""
    try:
        return int(text)
    except ValueError:
        return text


def _kind(f: dataclasses.Field, words: bool = False):
    """The argparse type of a field: bool, int, float or str (``str | list``: str; a plain list: not an option;
    ``int | str``: :func:`int_or_word` where ``words``, else int)."""
    tp = f.type if not isinstance(f.type, str) else f.type
    text = str(tp)
    if text.startswith("bool"):
        return bool
    if text.startswith("list"):
        return None
    if text.replace(" ", "").startswith("int|str"):
        return int_or_word if words else int
    if text.startswith("int"):
        return int
    if text.startswith("float"):
        return float
    return str


def add_settings(parser: argparse.ArgumentParser, groups: typing.Iterable[str], *, defaults: TrainConfig | None = None,
                 only: typing.Collection[str] | None = None, skip: typing.Collection[str] = (),
                 lists: dict | None = None) -> None:
    """Add an option per setting of ``groups`` (names of :data:`~raypar.training.config.GROUPS`), in one argument
    group each.

    Args:
        defaults: the defaults the options take; None: every option defaults to None (so that a recipe or config
            file can fill what the command line leaves out), and the help shows TrainConfig's defaults. Only then
            (the values become a run's TrainConfig, which resolves them: ``--subnets auto``) does a number setting
            that also takes a word (``int | str``) take words; commands that read the numbers get numbers.
        only: the flat keys to add (default: all of the groups'); ``skip``: keys left out.
        lists: flat key -> (option, help, default) for settings that this command takes as a list (``1,2,4``).
    """
    shown_from = defaults or TrainConfig()
    lists = lists or {}
    for group in groups:
        cls = GROUPS[group]
        g = parser.add_argument_group(cls.__doc__.splitlines()[0].rstrip("."))
        for f in dataclasses.fields(cls):
            key = key_of(f)
            if (only is not None and key not in only) or key in skip:
                continue
            meta = f.metadata
            names = [f"--{key.replace('_', '-')}"] + ([f"-{meta['short']}"] if meta.get("short") else [])
            if key in lists:
                flag, help_, default = lists[key]
                g.add_argument(flag, *names[1:], dest=key, type=int_list, default=default, help=help_)
                continue
            kind = _kind(f, words=defaults is None)
            if kind is None:
                continue
            shown = getattr(getattr(shown_from, group), f.name)
            default = shown if defaults is not None else None
            said = shown is None and "(default:" in meta["help"]          # a default the help itself explains
            help_ = (meta["help"] if said else f"{meta['help']} (default: {shown})").replace("%", "%%")
            kw: dict = {"dest": key, "default": default, "help": help_}
            if kind is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = kind
                if meta.get("choices"):
                    kw["choices"] = list(meta["choices"])
            g.add_argument(*names, **kw)


def given_settings(args: argparse.Namespace, skip: typing.Collection[str] = ()) -> dict:
    """The settings given on the command line (options left at None are not given), by flat key."""
    from ..training.config import KEYS
    return {k: v for k, v in vars(args).items() if k in KEYS and k not in skip and v is not None}


def config_from_args(args, skip: tuple = ()) -> TrainConfig:
    """The validated :class:`TrainConfig` of parsed ``train`` (or ``study``) arguments: the defaults, replaced by
    ``--recipe``, then by ``--config``, then by every option given on the command line (``skip``: options that are
    not settings of one run here, like a study's lists of N and K). Where the recipe or file pins a split for the
    run's N (see :func:`config_and_splits`), the run splits so."""
    cfg, splits = config_and_splits(args, skip)
    if cfg.model.subnets in splits:
        cfg = cfg.replace(balance=splits[cfg.model.subnets])
    return cfg


def config_and_splits(args, skip: tuple = ()) -> tuple[TrainConfig, dict[int, list[int]]]:
    """:func:`config_from_args`'s configuration before a pinned split is applied, and the pinned splits: the
    ``[splits]`` table (N -> block counts) of the last of ``--recipe`` and ``--config`` that has one, unless a later
    source sets ``balance`` or another ``model`` (the counts are that model's blocks)."""
    import os

    from ..network.specs import parse_balance
    from ..training import recipes
    from ..training.config import check_splits, load_file
    values: dict = {}
    splits: dict = {}

    def sets_the_split_aside(later: dict) -> bool:     # a later source's balance, or another model's blocks
        return "balance" in later or later.get("model", values.get("model")) != values.get("model")
    if args.recipe:
        recipe = recipes.get(args.recipe)
        values.update(recipe.values, recipe=recipe.tag)
        splits = dict(recipe.splits)
    if args.config:
        from_file, meta = load_file(args.config)
        if "splits" in meta or sets_the_split_aside(from_file):
            splits = meta.get("splits", {})
        values.update(from_file)
        if meta.get("name"):
            values["recipe"] = f"{meta['name']}@{meta.get('version', 0)}"
    given = given_settings(args, skip=(*skip, "recipe"))             # --recipe is a name, not the setting
    if sets_the_split_aside(given):
        splits = {}
    if "balance" in given:
        given["balance"] = parse_balance(given["balance"], tune=True)
    values.update(given)
    if "subnets" in skip and isinstance(values.get("balance"), list):
        values["subnets"] = len(values["balance"])       # a study's base: the split's N (its runs set their own)
    if "tracking_uri" not in values:
        values["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    cfg = TrainConfig.from_flat(**values)
    check_splits(cfg.model.name, splits)
    return cfg, splits
