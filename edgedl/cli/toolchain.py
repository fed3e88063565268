"""``edgedl toolchain``: what building microcontroller firmware needs, and fetching its sources."""

import json

import click


@click.group()
def toolchain():
    """The microcontroller toolchain: pinned TFLite Micro and CMSIS sources, the Arm compiler, QEMU.

    \b
    Examples:
      edgedl toolchain status
      edgedl toolchain fetch
      edgedl toolchain fetch --mirror /srv/mirror     (a folder holding the GitHub archives)
    """


@toolchain.command()
@click.option("--mirror", type=click.Path(), metavar="DIR|URL",
              help="Copy the archives from this folder (or file:// / http:// URL) instead of GitHub "
                   "(default: $EDGEDL_MIRROR, else GitHub).")
@click.option("--json", "as_json", is_flag=True, help="Print the sources as JSON.")
def fetch(mirror, as_json):
    """Download TFLite Micro, CMSIS-NN, CMSIS_6, the Cortex device pack and what they build with, at
    pinned commits, into the user cache (once; later firmware builds read them from there)."""
    from edgedl.mcu import sources

    sources.fetch(mirror)
    rows = sources.status()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']:<14} {row['commit'][:12]:<12}  {row['path']}")


@toolchain.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(as_json):
    """Which sources are cached, and whether the Arm compiler and QEMU are installed."""
    from edgedl.errors import EdgeDLError
    from edgedl.mcu import sources
    from edgedl.mcu.build import INSTALL_HINT, toolchain as find_toolchain
    from edgedl.mcu.emulate import INSTALL_HINT as QEMU_HINT
    from edgedl.mcu.emulate import QEMU

    try:
        compiler = {"found": True, "version": find_toolchain()["version"]}
    except EdgeDLError as e:
        compiler = {"found": False, "problem": str(e), "install": INSTALL_HINT}
    import shutil

    qemu = shutil.which(QEMU)
    report = {"sources": sources.status(), "compiler": compiler,
              "emulator": {"found": bool(qemu), "path": qemu} if qemu else {"found": False, "install": QEMU_HINT}}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for row in report["sources"]:
        click.echo(f"{row['name']:<14} {row['commit'][:12]:<12}  "
                   f"{'cached' if row['cached'] else 'not fetched (edgedl toolchain fetch)'}")
    click.echo(f"compiler       {compiler.get('version') or 'missing: ' + compiler['install']}")
    click.echo(f"emulator       {qemu or 'missing: ' + QEMU_HINT}")
