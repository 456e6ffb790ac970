"""The ``kiosk`` command: start the local stack, submit images, follow and fetch jobs.

Everything but ``up`` talks to the HTTP API, so it works the same against a remote cluster
(``--url`` or ``KIOSK_URL``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from kiosk.filetypes import (
    ACCEPTED,
    MOVIE_JOB_TYPES,
    UnsupportedFile,
    check_for_job_type,
    check_name,
    kind_from_name,
)
from kiosk.keys import FINAL_STATUSES, Status
from kiosk.options import OptionError, check_options
from kiosk.pace import in_words
from local.client import DEFAULT_URL, KioskClient, KioskError

app = typer.Typer(
    help="Kiosk: deep-learning segmentation of microscopy images, on one machine or a cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
T = TypeVar("T")
errors = Console(stderr=True, soft_wrap=True)


@dataclass
class Target:
    url: str
    token: str | None

    def client(self) -> KioskClient:
        return KioskClient(self.url, self.token)


@app.callback()
def options(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="KIOSK_URL", help="Kiosk to talk to.")] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(envvar="KIOSK_API_TOKEN", help="API token, if the Kiosk needs one."),
    ] = None,
) -> None:
    ctx.obj = Target(url, token)


def ask(ctx: typer.Context, call: Callable[[KioskClient], T]) -> T:
    """One request to the Kiosk the command names; its refusal ends the command with the
    Kiosk's message."""
    target: Target = ctx.obj
    try:
        with target.client() as client:
            return call(client)
    except KioskError as exc:
        raise fail(str(exc)) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


# ----------------------------------------------------------------------------- up


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to serve on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to serve on (default 8080).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where Redis data, the bucket and logs go.")
    ] = None,
    queues: Annotated[
        str | None, typer.Option(help="Job types to run, comma-separated (KIOSK_QUEUES).")
    ] = None,
    consumers: Annotated[
        int | None,
        typer.Option(
            help="Consumer processes per job type, and an always-on model server; "
            "0 (the default): scale both with the work."
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(help="Once up, segment the bundled sample images and zip (samples/)."),
    ] = False,
) -> None:
    """Start the local stack (Redis, model server, frontend, consumers, janitor) until Ctrl-C."""
    from kiosk.settings import StackSettings
    from local.stack import run_stack

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": str(data_dir) if data_dir else None,
        "queues": queues,
        "consumers_per_queue": consumers,
    }
    try:
        settings = StackSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    raise typer.Exit(run_stack(settings, console, demo=demo))


# ----------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (default 8500).")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="HTTP port for health and metrics (default 8501; 0: off).")
    ] = None,
    bucket: Annotated[
        str | None, typer.Option(help="Bucket holding models/NAME/VERSION/ (KIOSK_BUCKET).")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Models to serve, comma-separated (default: all).")
    ] = None,
) -> None:
    """Serve SavedModels over TF Serving's gRPC API until Ctrl-C (needs TensorFlow)."""
    # The model server is its own service (python -m model_server); this process becomes it,
    # so signals and the exit status are the server's own.
    options = {"--host": host, "--port": port, "--http-port": http_port}
    options |= {"--bucket": bucket, "--models": models}
    argv = [sys.executable, "-m", "model_server"]
    argv += [
        str(part) for name, value in options.items() if value is not None for part in (name, value)
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


# ----------------------------------------------------------------------------- submit


def _takes(job_type: str, name: str) -> bool:
    """Whether the job type can read a file of this name (.trk/.trks: tracking only)."""
    kind = kind_from_name(name)
    if kind is None:
        return False
    try:
        check_for_job_type(name, kind, job_type)
    except UnsupportedFile:
        return False
    return True


def collect_files(
    paths: list[Path], job_type: str = ""
) -> tuple[list[Path], list[tuple[Path, str]], int]:
    """Files to submit, files refused (with why), and how many files a folder held that are
    not for this job type (not images, or movies only tracking reads)."""
    chosen: list[Path] = []
    refused: list[tuple[Path, str]] = []
    skipped = 0
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.name.startswith(".") or not _takes(job_type, child.name):
                    skipped += 1
                else:
                    chosen.append(child)
        elif path.is_file():
            try:
                check_for_job_type(path.name, check_name(path.name), job_type)
                chosen.append(path)
            except UnsupportedFile as exc:
                refused.append((path, str(exc)))
        else:
            refused.append((path, f"{path} does not exist"))
    return chosen, refused, skipped


def result_name(source: Path, output_url: str, taken: set[str]) -> str:
    """A download name that says which input it came from and collides with no other."""
    result = unquote(output_url.rsplit("/", 1)[-1]) or "result"
    name = result if result.startswith(source.stem) else f"{source.stem}_{result}"
    stem, dot, ext = name.partition(".")
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}{dot}{ext}"
    taken.add(candidate)
    return candidate


def _seconds(job: dict[str, Any]) -> str:
    created, finished = job.get("created_at"), job.get("finished_at")
    if not (created and finished):
        return ""
    delta = datetime.fromisoformat(finished) - datetime.fromisoformat(created)
    return f"{delta.total_seconds():.1f}"


def _styled(status: str) -> str:
    colour = {"done": "green", "failed": "red"}.get(status, "yellow")
    return f"[{colour}]{escape(status)}[/]"


@app.command()
def submit(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Images, zips, or folders of them; for tracking, movies: multi-page TIFFs, "
            "zips of frames, .trk/.trks."
        ),
    ],
    job_type: Annotated[str, typer.Option("--job-type", "-j", help="Job type to run.")],
    wait: Annotated[bool, typer.Option(help="Wait until every job is done or failed.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Download results here (implies --wait). A zip's or a movie's results come "
            "as one .zip, saved as it is (tracking: tracked labels, lineage.json, CTC files)."
        ),
    ] = None,
    scale: Annotated[str, typer.Option(help="Microns per pixel of the images.")] = "",
    model: Annotated[str, typer.Option(help="Model as NAME or NAME:VERSION.")] = "",
    channels: Annotated[
        str,
        typer.Option(
            help="Channel(s) counted from 0: 1 (nuclei); ,1 (whole cells in a cytoplasm or "
            "brightfield channel); mesmer: NUCLEAR,MEMBRANE, e.g. 0,1."
        ),
    ] = "",
    dimension_order: Annotated[str, typer.Option(help="Axis order, e.g. CYX.")] = "",
    compartment: Annotated[
        str,
        typer.Option(help="mesmer jobs: whole-cell (the default), nuclear or both."),
    ] = "",
    timeout: Annotated[
        float | None, typer.Option(help="Stop waiting after this many seconds.")
    ] = None,
) -> None:
    """Upload images, zips or movies and create a job for each; optionally wait and download.

    With -j tracking each file is a movie; its progress shows frames segmented, then linking.
    With -j mesmer each image has a nuclear and a membrane channel (--channels NUCLEAR,MEMBRANE).
    """
    target: Target = ctx.obj
    try:
        check_options(scale, channels, dimension_order, compartment, job_type)
    except OptionError as exc:
        raise fail(str(exc), 2) from None
    files, refused, skipped = collect_files(paths, job_type)
    for path, why in refused:
        errors.print(f"[red]refused[/] {escape(str(path))}: {escape(why)}")
    if skipped:
        console.print(f"skipped {skipped} files that are not {ACCEPTED}")
    if not files:
        raise fail("nothing to submit")
    options = {
        "scale": scale,
        "model": model,
        "channels": channels,
        "dimension_order": dimension_order,
        **({"compartment": compartment} if compartment else {}),
    }
    jobs: dict[Path, dict[str, Any]] = {}
    problems: dict[Path, str] = {}
    with target.client() as client:
        try:
            known = client.job_types()
            aliases = client.job_type_aliases()
        except KioskError as exc:
            raise fail(str(exc)) from None
        if job_type not in known and job_type not in aliases:
            raise fail(
                f"unknown job type {job_type!r}: {target.url} runs "
                f"{', '.join(known) or 'no job types'}"
            )
        total = sum(p.stat().st_size for p in files)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("uploading", total=total)
            for path in files:
                progress.update(task, description=f"uploading {escape(path.name)}")
                try:
                    jobs[path] = client.submit(
                        path, job_type, options, lambda n: progress.advance(task, n)
                    )
                except KioskError as exc:
                    if exc.status is None or exc.status == 401:
                        raise fail(str(exc)) from None
                    problems[path] = str(exc)
                    progress.console.print(
                        f"[red]refused[/] {escape(str(path))}: {escape(str(exc))}"
                    )
        console.print(f"submitted {len(jobs)} of {len(files)} files to {target.url}")
        if (wait or out) and jobs:
            try:
                jobs = _wait(client, jobs, timeout)
            except KioskError as exc:
                raise fail(f"{exc}; the jobs go on: follow them with `kiosk jobs`") from None
        downloaded: dict[Path, Path] = {}
        if out:
            taken: set[str] = set()
            for path, job in jobs.items():
                if job["status"] == Status.DONE:
                    name = result_name(path, job.get("output_url") or "", taken)
                    try:
                        downloaded[path] = client.download(job["id"], out, name)
                    except KioskError as exc:
                        problems[path] = str(exc)
    _summary(files, jobs, problems, downloaded)
    failed = bool(refused or problems or any(j["status"] == Status.FAILED for j in jobs.values()))
    raise typer.Exit(1 if failed else 0)


MAX_JOB_BARS = 8  # zips and movies that get a progress bar of their own


def job_progress(job: dict[str, Any]) -> tuple[str, int]:
    """What a zip or movie is doing, in words, and its percent: a movie's frames segmented
    (``frames segmented 12 / 40``), then ``linking``; a zip's images done."""
    status, children = job["status"], job.get("children")
    if status in FINAL_STATUSES:
        return str(status), 100
    if not children or not children.get("total"):
        return str(status), int(job.get("progress") or 0)
    total, done, failed = children["total"], children["done"], children["failed"]
    movie = children.get("unit") == "frames"
    if movie and status == Status.POST_PROCESSING:
        return "linking", int(job.get("progress") or 0)
    if movie and status != Status.WAITING and done + failed >= total:
        return str(status), int(job.get("progress") or 0)  # saving the results
    if movie:
        counted = f"frames segmented {done} / {total}"
    else:
        counted = f"{children.get('unit', 'images')} done {done} / {total}"
    if failed:
        counted += f", {failed} failed"
    return counted, round(100 * (done + failed) / total)


def eta_words(job: dict[str, Any], now: datetime | None = None) -> str:
    """Where a job stands in words: its place in the queue and when it should start, or when
    it should finish; '' when the Kiosk has no estimate."""
    now = now or datetime.now(UTC)
    words = []
    if job.get("position") is not None:
        words.append("next in line" if job["position"] == 0 else f"{job['position']} ahead")
        if job.get("eta_start"):
            left = (datetime.fromisoformat(job["eta_start"]) - now).total_seconds()
            words.append(f"starts in ~{in_words(max(0.0, left))}")
    elif job.get("eta_finish") and job["status"] not in FINAL_STATUSES:
        left = (datetime.fromisoformat(job["eta_finish"]) - now).total_seconds()
        words.append(f"done in ~{in_words(max(0.0, left))}")
    return ", ".join(words)


def _overall(jobs: list[dict[str, Any]]) -> str:
    """The jobs' states in one line, with the latest of their estimated finishes."""
    states = [j["status"] for j in jobs]
    done, failed = states.count("done"), states.count("failed")
    line = f"{done} done, {failed} failed, {len(states) - done - failed} waiting or running"
    finishes = [
        datetime.fromisoformat(j["eta_finish"])
        for j in jobs
        if j.get("eta_finish") and j["status"] not in FINAL_STATUSES
    ]
    if finishes and len(finishes) == len(states) - done - failed:
        left = (max(finishes) - datetime.now(UTC)).total_seconds()
        line += f"; all done in ~{in_words(max(0.0, left))}"
    elif len(jobs) == 1 and (words := eta_words(jobs[0])):
        line += f"; {words}"
    return line


def _wait(
    client: KioskClient, jobs: dict[Path, dict[str, Any]], timeout: float | None
) -> dict[Path, dict[str, Any]]:
    by_id = {job["id"]: path for path, job in jobs.items()}
    latest = {job["id"]: job for job in jobs.values()}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("waiting", total=100 * len(latest))
        bars: dict[str, TaskID] = {}

        def on_update(job: dict[str, Any]) -> None:
            latest[job["id"]] = job
            progress.update(
                task,
                completed=sum(
                    100 if j["status"] in ("done", "failed") else j["progress"]
                    for j in latest.values()
                ),
                description=_overall(list(latest.values())),
            )
            if job["id"] not in bars and job.get("children") and len(bars) < MAX_JOB_BARS:
                bars[job["id"]] = progress.add_task("", total=100)
            if job["id"] in bars:
                words, percent = job_progress(job)
                if eta := eta_words(job):
                    words = f"{words} ({eta})"
                name = escape(by_id[job["id"]].name)
                progress.update(
                    bars[job["id"]], completed=percent, description=f"  {name}: {escape(words)}"
                )

        final = client.wait(list(by_id), on_update, timeout=timeout)
    return {by_id[job_id]: job for job_id, job in final.items()}


def _summary(
    files: list[Path],
    jobs: dict[Path, dict],
    problems: dict[Path, str],
    downloaded: dict[Path, Path],
) -> None:
    table = Table(title="Kiosk jobs")
    for column in ("file", "job", "status", "seconds", "result"):
        table.add_column(column, overflow="fold")
    for path in files:
        job = jobs.get(path)
        if job is None:
            table.add_row(
                escape(str(path)), "", "[red]not submitted[/]", "", escape(problems.get(path, ""))
            )
            continue
        status = job["status"]
        result = str(
            downloaded.get(path)
            or problems.get(path)
            or job.get("reason")
            or job.get("output_url")
            or ""
        )
        table.add_row(
            escape(str(path)), escape(job["id"]), _styled(status), _seconds(job), escape(result)
        )
    console.print(table)


# ----------------------------------------------------------------------------- follow jobs


@app.command()
def status(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job id, as `kiosk submit` printed it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Show one job."""
    found = ask(ctx, lambda client: client.job(job))
    if as_json:
        console.print_json(json.dumps(found))
        return
    console.print(status_table(found))


def status_table(job: dict[str, Any]) -> Table:
    """One job's fields; a zip's images or a movie's frames counted; what failed in it."""
    table = Table(show_header=False)
    movie = job.get("job_type") in MOVIE_JOB_TYPES
    for name in (
        "id",
        "job_type",
        "name",
        "status",
        "progress",
        "position",
        "eta_start",
        "eta_finish",
        "created_at",
        "started_at",
        "finished_at",
        "reason",
        "output_url",
        "preview_url",
        "objects",
        "attempts",
    ):
        if job.get(name) not in (None, ""):
            value = str(job[name])
            label = "tracks" if movie and name == "objects" else name
            table.add_row(label, _styled(value) if name == "status" else escape(value))
    if words := eta_words(job):
        table.add_row("where", escape(words))
    children = job.get("children")
    if children:
        unit = children.get("unit", "images")  # images, frames (of a movie) or movies
        verb = "segmented" if unit == "frames" else "done"
        table.add_row(
            unit,
            f"{children['done']} of {children['total']} {verb}, {children['failed']} failed",
        )
        if unit == "frames" and job["status"] == Status.POST_PROCESSING:
            table.add_row("linking", f"{job['progress']}%")
    for failure in job.get("failures") or []:
        table.add_row("failed", escape(f"{failure['name']}: {failure['reason']}"))
    for stage, seconds in job.get("timings", {}).items():
        table.add_row(stage, f"{seconds:.3f} s")
    return table


@app.command()
def download(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job id.")],
    out: Annotated[Path, typer.Option(help="Directory to save the result in.")] = Path("."),
) -> None:
    """Download a done job's result."""
    path = ask(ctx, lambda client: client.download(job, out))
    console.print(f"saved {escape(str(path))}")


@app.command("jobs")
def list_jobs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    job_type: Annotated[str | None, typer.Option(help="Only this job type.")] = None,
) -> None:
    """List recent jobs."""
    found = ask(ctx, lambda client: client.jobs(limit, status_filter, job_type))
    table = Table(title=f"{len(found)} jobs on {ctx.obj.url}")
    for column in ("job", "name", "status", "progress", "created", "seconds"):
        table.add_column(column, overflow="fold")
    for job in found:
        table.add_row(
            escape(job["id"]),
            escape(job["name"]),
            _styled(job["status"]),
            f"{job['progress']}%",
            job.get("created_at") or "",
            _seconds(job),
        )
    console.print(table)


@app.command("job-types")
def job_types(ctx: typer.Context) -> None:
    """List the job types this Kiosk runs."""
    names = ask(ctx, lambda client: client.job_types())
    console.print(escape("\n".join(names)) if names else "no job types configured")


@app.command()
def delete(ctx: typer.Context, job: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Delete a job (a running one stops)."""
    target: Target = ctx.obj
    try:
        with target.client() as client:
            client.delete(job)
    except KioskError as exc:
        raise fail(str(exc)) from None
    console.print(f"deleted {escape(job)}")


users_app = typer.Typer(
    help="Users and their API tokens (the administrator's token: --token or KIOSK_API_TOKEN).",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")


@users_app.command("add")
def add_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name: lower-case letters, digits, . _ -")],
    group: Annotated[str, typer.Option(help="The user's group (lab): members see its jobs.")] = "",
    weight: Annotated[
        float, typer.Option(help="Fair-share weight: 2 gets twice the jobs of 1 under load.")
    ] = 1.0,
) -> None:
    """Create a user and print their token: it is shown this once, so hand it on now."""
    user = ask(ctx, lambda client: client.add_user(name, group, weight))
    in_group = f" in group {escape(user['group'])}" if user["group"] else ""
    errors.print(f"created user {escape(user['name'])}{in_group}; their token (shown once):")
    console.print(user["token"])


@users_app.command("list")
def list_users(ctx: typer.Context) -> None:
    """List users: name, group, fair-share weight, created, revoked."""
    found = ask(ctx, lambda client: client.users())
    table = Table(title=f"{len(found)} users on {ctx.obj.url}")
    for column in ("user", "group", "weight", "created", "revoked"):
        table.add_column(column, overflow="fold")
    for user in found:
        table.add_row(
            escape(user["name"]),
            escape(user["group"]),
            f"{user['weight']:g}",
            user["created_at"],
            user.get("revoked_at") or "",
        )
    console.print(table)


@users_app.command("weight")
def set_weight(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name.")],
    weight: Annotated[float, typer.Argument(help="Fair-share weight, from 0.01 to 100.")],
) -> None:
    """Change a user's fair-share weight: their share of the consumers while users compete."""
    user = ask(ctx, lambda client: client.set_weight(name, weight))
    console.print(f"{escape(user['name'])} now weighs {user['weight']:g}")


@users_app.command("revoke")
def revoke_user(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]
) -> None:
    """Turn a user's token off for good (their jobs stay theirs)."""
    user = ask(ctx, lambda client: client.revoke_user(name))
    console.print(f"revoked {escape(user['name'])} at {user['revoked_at']}")


@app.command()
def usage(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="Only this user's jobs.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only jobs created since this date or time (ISO).")
    ] = None,
) -> None:
    """GPU seconds, CPU seconds and estimated cost of the jobs you may see, per user and group."""
    report = ask(ctx, lambda client: client.usage(user, since))
    for kind in ("users", "groups"):
        rows = report[kind]
        if kind == "groups" and not rows:
            continue
        table = Table(title=f"usage by {kind[:-1]}" + (f" since {since}" if since else ""))
        for column in (kind[:-1], "jobs", "GPU s", "CPU s", "cost $"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(
                escape(row["name"]),
                str(row["jobs"]),
                f"{row['gpu_seconds']:.1f}",
                f"{row['cpu_seconds']:.1f}",
                f"{row['cost']:.4f}",
            )
        console.print(table)


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Who the token (or its absence) makes you on this Kiosk."""
    me = ask(ctx, lambda client: client.me())
    role = " (administrator)" if me["admin"] else ""
    group = f", group {escape(me['group'])}" if me["group"] else ""
    console.print(f"{escape(me['name'])}{group}{role}")


def main() -> None:
    app()
