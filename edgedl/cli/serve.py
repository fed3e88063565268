"""``edgedl serve``: run the device agent that ``edgedl bench --device`` measures bundles through."""

import click

from edgedl.cli._options import COUNT, SECONDS, Number, Whole


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default takes connections from this machine only. Any other address "
                   "(0.0.0.0: every interface) needs --trust or --insecure: the agent runs the native code of the "
                   "bundles it is sent.")
@click.option("--port", type=Whole(1, 65535), default=9090, show_default=True, help="Port to listen on.")
@click.option("--port-end", type=Whole(1, 65535),
              help="Last port to try when --port and the ones after it are taken [default: --port + 109, so 9199].")
@click.option("--trust", "trust", multiple=True, metavar="KEY.pub",
              help="Accept only bundles signed by this public key (from `edgedl keygen`; sign with "
                   "`edgedl compile --sign KEY.key`). Repeat it to trust several keys.")
@click.option("--insecure", is_flag=True,
              help="Listen on a non-loopback --host without --trust: any bundle is run, so anyone who reaches the "
                   "port can run native code here. For trusted networks only.")
@click.option("--tracker", metavar="HOST:PORT",
              help="Register with this TVM tracker (python -m tvm.exec.rpc_tracker); clients then use "
                   "--device tracker://HOST:PORT/KEY and the tracker hands out free devices.")
@click.option("--key", default="edgedl", show_default=True, help="Device key to register under (with --tracker).")
@click.option("--max-sessions", type=COUNT, default=4, show_default=True,
              help="Clients served at once (their measurements take turns on the device); more wait for a free one. "
                   "With --tracker the agent asks the tracker for one client at a time, as one free device.")
@click.option("--idle-timeout", type=SECONDS, default=60.0, show_default=True,
              help="End a session that sends nothing for this many seconds.")
@click.option("--handshake-timeout", type=SECONDS, default=10.0, show_default=True,
              help="Close a new connection that has not completed the handshake within this many seconds.")
@click.option("--max-upload-mb", type=Number(min=0, min_open=True), default=1024.0, show_default=True,
              help="The most one session may upload (bundle and samples), in MiB.")
def serve(host, port, port_end, trust, insecure, tracker, key, max_sessions, idle_timeout, handshake_timeout,
          max_upload_mb):
    """Run the device agent: it measures bundles sent by `edgedl bench --device`.

    It listens on 127.0.0.1 unless --host says otherwise, serves up to --max-sessions clients at
    once, measures one bundle at a time, and stops on Ctrl-C or SIGTERM.

    \b
    Examples:
      edgedl serve --port 9090                      # then: edgedl bench m.edgedl --device 127.0.0.1:9090
      edgedl keygen fleet                           # fleet.key signs (compile --sign), fleet.pub trusts
      edgedl serve --host 0.0.0.0 --trust fleet.pub --tracker 10.0.0.1:9190 --key rpi4
                                                    # then: edgedl bench m.edgedl --device tracker://10.0.0.1:9190/rpi4
    """
    import math

    from edgedl.errors import OptionError
    from edgedl.serve import AgentOptions, check_exposure
    from edgedl.serve import serve as run_agent

    trusted = None
    if trust:
        from edgedl.signing import load_public_keys

        trusted = load_public_keys(list(trust))
    if check_exposure(host, trusted, insecure):
        click.echo(f"warning: --insecure: the agent on {host} runs any bundle it is sent; anyone who reaches port "
                   f"{port} can run native code on this machine", err=True)
    if not math.isfinite(max_upload_mb) or max_upload_mb <= 0:
        raise OptionError(f"--max-upload-mb must be a positive number of MiB, got {max_upload_mb}")

    def ready(agent):
        where = f"; registered with the tracker {agent.tracker} under the key '{agent.key}'" if agent.tracker else ""
        click.echo(f"edgedl agent listening on {agent.address}{where}", nl=True)
        trust_line = (f"accepts only bundles signed by {agent.trusted} trusted key{'s' if agent.trusted > 1 else ''}"
                      if agent.trusted else "accepts any bundle whose hashes verify")
        click.echo(f"benchmark with: edgedl bench BUNDLE --device {agent.device}  ({trust_line}; Ctrl-C stops the "
                   "agent)")

    run_agent(AgentOptions(host=host, port=port, port_end=port_end, tracker=tracker, key=key, trusted=trusted,
                           insecure=insecure, max_sessions=max_sessions, handshake_timeout=handshake_timeout,
                           idle_timeout=idle_timeout, max_upload_bytes=int(max_upload_mb * (1 << 20))), ready)
    click.echo("edgedl agent stopped", err=True)
