"""``edgedl serve``: run the device agent that ``edgedl bench --device`` measures bundles through."""

import click


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default takes connections from this machine only; 0.0.0.0 takes "
                   "them from the network. The agent runs whatever it is sent (it is a TVM RPC server): use it on "
                   "trusted networks only.")
@click.option("--port", type=int, default=9090, show_default=True, help="Port to listen on.")
@click.option("--port-end", type=int,
              help="Last port to try when --port and the ones after it are taken [default: --port + 109, so 9199].")
@click.option("--tracker", metavar="HOST:PORT",
              help="Register with this TVM tracker (python -m tvm.exec.rpc_tracker); clients then use "
                   "--device tracker://HOST:PORT/KEY and the tracker hands out free devices.")
@click.option("--key", default="edgedl", show_default=True, help="Device key to register under (with --tracker).")
def serve(host, port, port_end, tracker, key):
    """Run the device agent: a TVM RPC server that measures bundles sent by `edgedl bench --device`.

    It listens on 127.0.0.1 unless --host says otherwise, runs one benchmark at a time, and stops on
    Ctrl-C or SIGTERM.

    \b
    Examples:
      edgedl serve --port 9090                      # then: edgedl bench m.edgedl --device 127.0.0.1:9090
      edgedl serve --host 0.0.0.0 --tracker 10.0.0.1:9190 --key rpi4
                                                    # then: edgedl bench m.edgedl --device tracker://10.0.0.1:9190/rpi4
    """
    from edgedl.serve import serve as run_agent

    def ready(agent):
        where = f"; registered with the tracker {agent.tracker} under the key '{agent.key}'" if agent.tracker else ""
        click.echo(f"edgedl agent listening on {agent.address}{where}", nl=True)
        click.echo(f"benchmark with: edgedl bench BUNDLE --device {agent.device}  (Ctrl-C stops the agent)")

    run_agent(host=host, port=port, port_end=port_end, tracker=tracker, key=key, ready=ready)
    click.echo("edgedl agent stopped", err=True)
