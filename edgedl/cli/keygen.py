"""``edgedl keygen``: an Ed25519 key pair for signing bundles (``compile --sign``, ``serve --trust``)."""

import click


@click.command("keygen")
@click.argument("name")
@click.option("--force", is_flag=True, help="Replace existing NAME.key and NAME.pub.")
def keygen(name, force):
    """Write a key pair for signed bundles: NAME.key (private, mode 600) and NAME.pub (public).

    \b
    Sign when compiling:      edgedl compile lenet.keras -t rpi4 --sign NAME.key
    Trust on the device:      edgedl serve --host 0.0.0.0 --trust NAME.pub
    Keep NAME.key off the devices; copy only NAME.pub to them.
    """
    from edgedl.signing import generate_keypair, key_id, load_public_keys

    private, public = generate_keypair(name, force=force)
    click.echo(f"wrote {private} (private: keep it secret) and {public} "
               f"(key {key_id(load_public_keys([public])[0])}: give it to `edgedl serve --trust`)")
