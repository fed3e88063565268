"""``edgedl models``: list the model zoo."""

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the zoo as JSON.")
def models(as_json):
    """List the zoo's models with their data set, input shape and target accuracy."""
    from rich.console import Console
    from rich.table import Table

    from edgedl.zoo import list_models

    entries = list_models()
    if as_json:
        click.echo(json.dumps([m.summary() for m in entries], indent=2))
        return
    table = Table(title="edgedl model zoo")
    for col in ("model", "data set", "input", "epochs", "target acc.", "description"):
        table.add_column(col)
    for m in entries:
        r = m.recipe
        table.add_row(m.name, r["dataset"], "x".join(map(str, r["input_shape"])), str(r["epochs"]),
                      f"{100 * r['target_accuracy']:.1f}%", r["description"])
    Console().print(table)
