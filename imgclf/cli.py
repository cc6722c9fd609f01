"""`imgclf`: the everyday commands, one thin verb per library call (`imgclf --help`).

    imgclf predict photos/ --out submission.csv     batch prediction (a folder or an archive)
    imgclf select --candidate '{arch: efficientnet_lite2, image_size: 260}' ...
                                                    compare backbones by cross-validation
    imgclf promote --version 3 --reason "..."       point `champion` at a registry version
    imgclf rollback                                 `champion` back to the one it replaced
    imgclf history                                  every move of `champion` (JSON lines)
    imgclf monitor --days 7                         drift report of the prediction log
    imgclf bento                                    package the champion into a bento
    imgclf token --subject me --ttl 600             a JWT for testing the service

Settings come from params.yaml (`--params`, default: this project's) and the environment, as for
the service (imgclf.serving.settings). The DVC pipeline's stages are not verbs: `dvc repro` runs
them (`python -m stages.X`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from imgclf.config import PARAMS_FILE, Params, Paths, TrainParams, load_params


@dataclass(frozen=True)
class Project:
    """The project --params names: the file, the paths under its folder, its validated params."""

    params_file: Path
    paths: Paths
    params: Params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--params",
    "params_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=PARAMS_FILE,
    envvar="IMGCLF_PARAMS_FILE",
    help="the project's params.yaml (its folder is the project root); default: this checkout's",
)
@click.pass_context
def cli(ctx: click.Context, params_file: Path) -> None:
    """Image classifier: predict, manage the registry's champion, monitor, package, test."""
    # Verbs import TensorFlow lazily, and on import it prints C++ start-up lines (oneDNN, CPU
    # features) to stderr unless this is set first; a user's own value wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    params_file = params_file.resolve()
    with _reported(ValidationError, OSError, yaml.YAMLError):
        params = load_params(params_file)
    ctx.obj = Project(params_file, Paths(params_file.parent), params)


@contextmanager
def _reported(*errors: type[Exception], exit_code: int = 1) -> Iterator[None]:
    """An expected failure (`errors`) as its message on stderr and `exit_code`, no traceback."""
    try:
        yield
    except errors as exc:
        failure = click.ClickException(_one_line(exc))
        failure.exit_code = exit_code
        raise failure from exc


def _one_line(error: Exception) -> str:
    """pydantic's multi-line report as `key: problem` per error, on one line (no input shown:
    it may be a secret); any other message's lines joined (YAML's parser reports on several)."""
    if not isinstance(error, ValidationError):
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    problems = []
    for problem in error.errors():
        key = ".".join(map(str, problem["loc"]))  # empty for a check across several keys
        problems.append(f"{key}: {problem['msg']}" if key else problem["msg"])
    return "; ".join(problems)


# ------------------------------------------------------------------------------ prediction


@cli.command()
@click.argument("source", metavar="INPUT")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("submission.csv"),
    show_default=True,
    help="CSV to write",
)
@click.option(
    "--proba",
    is_flag=True,
    help="add the probabilities: <class>_probability (two classes), else a column per class",
)
@click.option(
    "--model",
    help="a .keras file, or an MLflow URI (models:/NAME@champion, runs:/ID/model); "
    "default: artifacts/train/model.keras",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="default: evaluate.batch_size")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: on a Ray cluster (docs/cluster.md), where INPUT may also be s3://bucket/prefix",
)
@click.option("--address", help="ray: the cluster's head host:port; default: $RAY_ADDRESS")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="ray: model actors; default: one per CPU of the cluster",
)
@click.option(
    "--parquet",
    type=click.Path(dir_okay=False, path_type=Path),
    help="ray: also write the predictions as Parquet (path, label, confidence, one per class)",
)
@click.pass_obj
def predict(
    project: Project,
    source: str,
    out: Path,
    proba: bool,
    model: str | None,
    batch_size: int | None,
    engine: str,
    address: str | None,
    concurrency: int | None,
    parquet: Path | None,
) -> None:
    """Batch prediction: INPUT, a folder (searched recursively) or a .zip/.tar archive of images,
    to a CSV: a submission `id,label` for two classes, else `path,label,confidence`. A file that
    is not a usable image is reported and skipped."""
    from imgclf.data.labels import ClassListError
    from imgclf.data.sources import SourceError
    from imgclf.model.batch_predict import run_predict

    if engine == "local" and (address or concurrency or parquet):
        raise click.UsageError("--address, --concurrency and --parquet go with --engine ray")
    options = {"model": model, "batch_size": batch_size, "proba": proba}
    with _reported(SourceError, OSError, ClassListError):  # FileNotFoundError is an OSError
        if engine == "ray":
            from imgclf.model.cluster_predict import run_predict_on_ray

            summary = run_predict_on_ray(
                project.paths,
                project.params,
                source,
                out,
                address=address,
                concurrency=concurrency,
                parquet=parquet,
                **options,
            )
        else:
            summary = run_predict(project.paths, project.params, Path(source), out, **options)
    for path, reason in summary.skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not summary.rows:
        raise click.ClickException(f"no usable images in {source}")
    if summary.duplicate_ids:
        click.echo(
            f"warning: {len(summary.duplicate_ids)} ids occur more than once "
            f"(e.g. {summary.duplicate_ids[0]}); file names should be unique",
            err=True,
        )
    counts = ", ".join(f"{n} {c}" for c, n in zip(summary.classes, summary.counts, strict=True))
    click.echo(
        f"predict: {summary.rows} images -> {out} ({counts}); skipped {len(summary.skipped)} "
        f"unreadable, ignored {summary.ignored} non-image files"
    )


@cli.command()
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    required=True,
    help="train params that differ from params.yaml's, a YAML mapping, e.g. "
    "'{arch: efficientnet_lite2, image_size: 260, tta: flip}'; repeat for each",
)
@click.option("--folds", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="also as JSON")
@click.pass_obj
def select(project: Project, candidates: tuple[str, ...], folds: int, out: Path | None) -> None:
    """Compare frozen-backbone candidates by cross-validated log loss on the split's train + val
    photos (never test) and name the cheapest within one standard error of the best. Needs the
    split and pretrained stages' outputs."""
    from imgclf.data.labels import read_classes

    with _reported(ValidationError, yaml.YAMLError, ValueError, OSError):
        trials = {text: _candidate(project.params.train, text) for text in candidates}
        from imgclf.model.selection import run_selection  # TensorFlow: once the input is sound

        compared, chosen = run_selection(
            project.paths, trials, read_classes(project.paths.split_classes), folds
        )
    click.echo(f"{'candidate':<60} {'c':>5} {'log loss':>9} {'accuracy':>9} "
               f"{'vs best ± 1 SE':>18} {'s/photo':>8} {'cost':>5}")  # fmt: skip
    for row in compared:
        s = row.scored
        click.echo(f"{s.name:<60} {s.c:5.2g} {s.log_loss:9.4f} {s.accuracy:9.2%} "
                   f"{row.difference:+9.4f} ± {row.standard_error:.4f} "
                   f"{s.seconds_per_photo:8.4f} {row.cost:5.2f}")  # fmt: skip
    click.echo(f"chosen: {chosen.scored.name} (the cheapest within one SE of the best)")
    if out:
        rows = [row.summary() for row in compared]
        report = {"folds": folds, "candidates": rows, "chosen": chosen.scored.name}
        out.write_text(json.dumps(report, indent=2) + "\n")


def _candidate(train: TrainParams, text: str) -> TrainParams:
    """params.yaml's train section with the YAML mapping `text` laid over it, validated."""
    overrides = yaml.safe_load(text)
    if not isinstance(overrides, dict):
        raise ValueError(f"--candidate {text!r} is not a mapping of train params")
    return TrainParams.model_validate(train.model_dump() | overrides)


# -------------------------------------------------------------------------------- registry


def _registry_call(project: Project, run: Callable[..., Any], *args: Any) -> Any:
    """`run(paths, params, *args)` from imgclf.registry.commands, its errors as one line."""
    from imgclf.registry.client import RegistryError

    with _reported(RegistryError):
        return run(project.paths, project.params, *args)


def _champion_move(out: dict[str, Any]) -> str:
    previous = f"v{out['previous']}" if out["previous"] else "none"
    note = f" ({out['note']})" if out["note"] else ""
    return f"champion {previous} -> v{out['version']}{note}"


@cli.command()
@click.option("--version", required=True, type=click.IntRange(min=1), help="registry version")
@click.option("--reason", default="", help="recorded in the champion's history")
@click.pass_obj
def promote(project: Project, version: int, reason: str) -> None:
    """Point the registry's `champion` alias at VERSION (a person's decision)."""
    from imgclf.registry.commands import run_promote

    click.echo(_champion_move(_registry_call(project, run_promote, version, reason)))


@cli.command()
@click.option("--reason", default="", help="recorded in the champion's history")
@click.pass_obj
def rollback(project: Project, reason: str) -> None:
    """Point `champion` back at the version it replaced."""
    from imgclf.registry.commands import run_rollback

    click.echo(_champion_move(_registry_call(project, run_rollback, reason)))


@cli.command()
@click.pass_obj
def history(project: Project) -> None:
    """Every recorded move of `champion`, oldest first, one JSON object a line."""
    from imgclf.registry.commands import run_history

    for event in _registry_call(project, run_history):
        click.echo(json.dumps(event, sort_keys=True))


# ------------------------------------------------------------------------------- monitoring


@cli.command()
@click.option("--db", help="prediction log (SQLAlchemy URL or SQLite file); default: the service's")
@click.option("--days", type=click.IntRange(min=1), help="window; default: monitor.days")
@click.option("--model-version", help="only predictions of this registry version")
@click.option("--out", type=click.Path(path_type=Path), help="default: artifacts/monitor")
@click.option("--now", type=click.DateTime(), help="end of the window (UTC); default: now")
@click.pass_obj
def monitor(
    project: Project,
    db: str | None,
    days: int | None,
    model_version: str | None,
    out: Path | None,
    now: dt.datetime | None,
) -> None:
    """Drift report: the prediction log's last days against the test split. Exit status: 0
    nothing flagged (or too little data), 1 drift flagged, 2 bad input (no database, no
    predictions table, no reference files)."""
    from imgclf.monitoring.drift.inputs import DriftInputError
    from imgclf.monitoring.drift.report import run_monitor, summary_lines
    from imgclf.serving.settings import database_url, load_settings

    with _reported(ValidationError):
        url = (
            database_url(db, Path.cwd())
            if db
            else load_settings(params_file=project.params_file).prediction_db_url
        )
    end = now.replace(tzinfo=dt.UTC) if now else dt.datetime.now(dt.UTC)
    with _reported(DriftInputError, exit_code=2):
        report, files = run_monitor(
            project.paths,
            project.params,
            url,
            end,
            days=days,
            model_version=model_version,
            out_dir=out,
        )
    click.echo("\n".join(summary_lines(report)))
    click.echo(f"report: {files['report.html']}")
    sys.exit(1 if report.flagged else 0)


# ---------------------------------------------------------------------------------- serving


@cli.command()
@click.option("--build/--no-build", default=True, help="build the bento after the import")
@click.option(
    "--bentofile",
    default="bentofile.yaml",
    show_default=True,
    help="relative to the project folder (--params's)",
)
@click.pass_obj
def bento(project: Project, build: bool, bentofile: str) -> None:
    """Import the registry's champion into the BentoML store, then build the bento from the
    project folder (--params's), so it carries the params.yaml the champion was chosen by."""
    from imgclf.registry.client import RegistryError
    from imgclf.serving.bento_model import import_champion
    from imgclf.serving.settings import load_settings

    with _reported(RegistryError, ValidationError):
        tag, version = import_champion(load_settings(params_file=project.params_file))
    click.echo(f"imported champion version {version} as {tag}")
    if build:
        click.echo(f"built {_build_bento(project.paths.root, bentofile)}")


def _build_bento(root: Path, bentofile: str) -> str:
    """The tag of the bento built with `root` as build context: `bentofile`'s includes (the
    classes and threshold in params.yaml among them) come from there, not the current folder."""
    import bentoml
    from bentoml.exceptions import InvalidArgument

    with _reported(InvalidArgument):  # e.g. no bentofile in that folder
        built = bentoml.bentos.build_bentofile(str(root / bentofile), build_ctx=str(root))
    return str(built.tag)


@cli.command()
@click.option("--subject", default="imgclf-cli", show_default=True, help="the `sub` claim")
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(min=1), help="seconds")
@click.option("--audience", help="the `aud` claim; default: IMGCLF_JWT_AUDIENCE or imgclf")
@click.option(
    "--scope", "scopes", multiple=True, help="a `scope` entry, e.g. feedback:any (repeatable)"
)
@click.pass_obj
def token(
    project: Project, subject: str, ttl: int, audience: str | None, scopes: tuple[str, ...]
) -> None:
    """Mint an HS256 JWT from IMGCLF_JWT_SECRET for testing the service, e.g.

    \b
    curl -H "Authorization: Bearer $(imgclf token)" -F image=@cat.jpg 127.0.0.1:3000/predict
    imgclf token --subject labellers --scope feedback:any   # may label anyone's predictions
    """
    import jwt

    from imgclf.serving.settings import AuthSettings

    with _reported(ValidationError):
        settings = AuthSettings()
    if settings.jwt_secret is None:
        raise click.ClickException("minting needs IMGCLF_JWT_SECRET (HS256)")
    longest = project.params.serve.max_token_lifetime_seconds
    if ttl > longest:  # the service would refuse it
        raise click.ClickException(
            f"--ttl {ttl} is over serve.max_token_lifetime_seconds {longest}"
        )
    now = int(time.time())
    claims = {
        "sub": subject,
        "aud": audience or settings.jwt_audience,
        "iat": now,
        "exp": now + ttl,
        **({"scope": " ".join(scopes)} if scopes else {}),
        **({"iss": settings.jwt_issuer} if settings.jwt_issuer else {}),
    }
    click.echo(jwt.encode(claims, settings.jwt_secret.get_secret_value(), "HS256"))
