"""A small app that is not the example: a shopping list whose ids and titles
are text fields that often look like numbers or booleans (``item_id=1``,
``title=true``), and a few fields of other types. ``motet serve --app`` loads
it from a copy of this file in the test's folder."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from motet.engine import Aggregate, App, Projection, Query


class AddItem(msgspec.Struct, frozen=True, kw_only=True, tag="AddItem"):
    """Put an item on a shopping list (``count`` of it)."""

    list_id: str
    item_id: str
    title: str
    count: int = 1
    price: float | None = None
    urgent: bool = False
    unit: Literal["piece", "kg"] = "piece"


class ItemAdded(msgspec.Struct, frozen=True, kw_only=True, tag="ItemAdded"):
    list_id: str
    item_id: str
    title: str
    count: int
    price: float | None
    urgent: bool
    unit: str


class ListState(msgspec.Struct, frozen=True, kw_only=True, tag="ListState"):
    items: int = 0


class GetItems(msgspec.Struct, frozen=True, kw_only=True, tag="GetItems"):
    """The items of one list, in the order they were added."""

    list_id: str


def decide(state: ListState, command: AddItem) -> list[ItemAdded]:
    return [ItemAdded(**msgspec.structs.asdict(command))]


def evolve(state: ListState, event: ItemAdded) -> ListState:
    return ListState(items=state.items + 1)


def _on_added(model: dict[str, list[Any]], event: ItemAdded, record: Any) -> None:
    model.setdefault(event.list_id, []).append(msgspec.to_builtins(event))


def get_items(model: dict[str, list[Any]], query: GetItems) -> list[Any]:
    return model.get(query.list_id, [])


shopping_list = Aggregate(
    name="List",
    state_type=ListState,
    initial=ListState(),
    decide=decide,
    evolve=evolve,
    commands={AddItem: "list_id"},
    events=(ItemAdded,),
)
items = Projection(name="items", initial=dict, handlers={ItemAdded: _on_added})
app = App(
    aggregates=(shopping_list,),
    projections=(items,),
    queries=(Query(GetItems, "items", get_items),),
)
