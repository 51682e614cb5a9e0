"""Tasks, splits and the scripted expert.

A task is a plain dict (JSON-serialisable, so it travels in a dataset column):

```
{"task_id": "cancel-4821", "split": "train", "category": "action", "kind": "cancel", "db_seed": 4821,
 "user_id": "u3", "request": "Hi, I'm u3. Please cancel reservation r12.",
 "actions": [{"name": "get_reservation", "arguments": {"reservation_id": "r12"}}, ...],
 "required_facts": ["360"], "expert_answer": "Reservation r12 is cancelled. ..."}
```

`actions` is the expert's tool-call sequence (τ-bench's reference actions: the gold end state is this sequence applied to
a fresh `make_db(db_seed)`), `required_facts` the strings the final answer must contain (τ-bench's `communicate_info`),
`expert_answer` the expert's final message. These are gold fields: never show them to the policy.

Each kind is generated from `(kind, db_seed)` alone, so `task_id = f"{kind}-{db_seed}"` identifies the task and
`task_from_id` rebuilds it. The split is a hash of `db_seed`: a database (its ids, routes and states) belongs to exactly
one split, which makes train and test disjoint for every seed. Several kinds share one request template and differ
only in the database state (`cancel` vs `cancel_basic`, `set_bags` vs `remove_bags`, `book_flight` vs
`book_unavailable`): the right action depends on what the read tools return, not on the wording.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .domain import (
    MAX_BAGS_PER_PASSENGER,
    ToolError,
    apply_tool,
    bag_fee,
    db_hash,
    is_bookable,
    is_refundable,
    make_db,
    quantity,
)


Task = dict[str, Any]
ToolCall = dict[str, Any]

CATEGORIES = ("action", "information", "no_action", "transfer")
DEFAULT_MIX = {"action": 0.4, "information": 0.25, "no_action": 0.2, "transfer": 0.15}

_GREETINGS = ("Hi, I'm {user}. ", "Hello, this is {user}. ")
_CANCEL = ("Please cancel reservation {rid}.", "I need to cancel my reservation {rid}.")
_BAGS = ("Please change the checked bags on {rid} to {bags}.", "Can reservation {rid} have {bags} checked bags?")
_BOOK = ("Please book flight {fid} in {cabin} for {passengers}.", "I want {passengers} on flight {fid}, {cabin}.")
_TRANSFER_ANSWER = "I have transferred you to a human agent."


@dataclass
class _Draft:
    user_id: str
    request: str
    actions: list[ToolCall]
    expert_answer: str
    required_facts: list[str]


def _call(name: str, **arguments: Any) -> ToolCall:
    return {"name": name, "arguments": arguments}


def _replay(db: dict[str, Any], user: str, actions: list[ToolCall]) -> list[str]:
    return [apply_tool(db, user, call["name"], call["arguments"]) for call in actions]


def _booked(db: dict[str, Any], user: str, actions: list[ToolCall]) -> str:
    """The id of the reservation that `actions` (ending with a booking) create."""
    after = copy.deepcopy(db)
    _replay(after, user, actions)
    return after["users"][user]["reservations"][-1]


def _active(db: dict[str, Any]) -> list[str]:
    return [rid for rid, r in db["reservations"].items() if r["status"] == "active"]


def _flight_of(db: dict[str, Any], rid: str) -> dict[str, Any]:
    return db["flights"][db["reservations"][rid]["flight_id"]]


def _cheapest(db: dict[str, Any], origin: str, destination: str, date: str, passengers: int) -> str | None:
    """The unique cheapest bookable flight on a route and date (None when there is none or prices tie)."""
    options = sorted(
        (flight["price"], fid)
        for fid, flight in db["flights"].items()
        if (flight["origin"], flight["destination"], flight["date"]) == (origin, destination, date)
        and is_bookable(flight, passengers)
    )
    if not options or (len(options) > 1 and options[0][0] == options[1][0]):
        return None
    return options[0][1]


def _searches(db: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted({(f["origin"], f["destination"], f["date"]) for f in db["flights"].values()})


# Builders: one per kind. Each picks entities from the database with `rng`, or returns None if the database has none
# that fit. They write the expert's actions and answer; `make_task` replays the actions to check them.


def _cancel(db, rng):
    options = [rid for rid in _active(db) if is_refundable(db["reservations"][rid], _flight_of(db, rid))]
    if not options:
        return None
    rid = rng.choice(options)
    user, refund = db["reservations"][rid]["user_id"], str(db["reservations"][rid]["paid"])
    actions = [_call("get_reservation", reservation_id=rid), _call("cancel_reservation", reservation_id=rid)]
    answer = f"Reservation {rid} is cancelled. You will get a refund of {refund}."
    return _Draft(user, rng.choice(_CANCEL).format(rid=rid), actions, answer, [refund])


def _set_bags(db, rng):
    limit = MAX_BAGS_PER_PASSENGER
    options = [
        rid for rid in _active(db) if db["reservations"][rid]["bags"] < limit * db["reservations"][rid]["passengers"]
    ]
    if not options:
        return None
    rid = rng.choice(options)
    reservation = db["reservations"][rid]
    bags = rng.randint(reservation["bags"] + 1, limit * reservation["passengers"])
    actions = [_call("get_reservation", reservation_id=rid), _call("update_baggage", reservation_id=rid, bags=bags)]
    fee = str(bag_fee(reservation, db["users"][reservation["user_id"]]["membership"], bags))
    answer = f"Reservation {rid} now has {bags} checked bags. The fee is {fee}."
    return _Draft(reservation["user_id"], rng.choice(_BAGS).format(rid=rid, bags=bags), actions, answer, [fee])


def _book_flight(db, rng):
    options = [fid for fid, flight in db["flights"].items() if is_bookable(flight, 1)]
    if not options:
        return None
    fid = rng.choice(options)
    passengers = rng.randint(1, min(3, db["flights"][fid]["seats"]))
    cabin, user = rng.choice(("basic", "economy", "business")), rng.choice(sorted(db["users"]))
    actions = [
        _call("get_flight", flight_id=fid),
        _call("book_flight", user_id=user, flight_id=fid, cabin=cabin, passengers=passengers),
    ]
    new_rid = _booked(db, user, actions)
    answer = f"You are booked on {fid} in {cabin}. Your reservation is {new_rid}."
    request = rng.choice(_BOOK).format(fid=fid, cabin=cabin, passengers=quantity(passengers, "passenger"))
    return _Draft(user, request, actions, answer, [new_rid])


def _book_cheapest(db, rng):
    passengers = rng.choice((1, 1, 2, 3))
    options = [s for s in _searches(db) if _cheapest(db, *s, passengers)]
    if not options:
        return None
    origin, destination, date = rng.choice(options)
    fid = _cheapest(db, origin, destination, date, passengers)
    cabin, user = rng.choice(("basic", "economy", "business")), rng.choice(sorted(db["users"]))
    actions = [
        _call("search_flights", origin=origin, destination=destination, date=date),
        _call("book_flight", user_id=user, flight_id=fid, cabin=cabin, passengers=passengers),
    ]
    new_rid = _booked(db, user, actions)
    request = (
        f"Please book the cheapest available flight from {origin} to {destination} on {date}, {cabin}, "
        f"for {quantity(passengers, 'passenger')}."
    )
    answer = f"You are booked on {fid}, the cheapest available flight. Your reservation is {new_rid}."
    return _Draft(user, request, actions, answer, [new_rid])


def _rebook(db, rng):
    options = []
    for rid in _active(db):
        reservation, flight = db["reservations"][rid], _flight_of(db, rid)
        if is_refundable(reservation, flight):
            for date in sorted({f["date"] for f in db["flights"].values()} - {flight["date"]}):
                if _cheapest(db, flight["origin"], flight["destination"], date, reservation["passengers"]):
                    options.append((rid, date))
    if not options:
        return None
    rid, date = rng.choice(options)
    reservation, flight = db["reservations"][rid], _flight_of(db, rid)
    user = reservation["user_id"]
    fid = _cheapest(db, flight["origin"], flight["destination"], date, reservation["passengers"])
    actions = [
        _call("get_reservation", reservation_id=rid),
        _call("cancel_reservation", reservation_id=rid),
        _call("search_flights", origin=flight["origin"], destination=flight["destination"], date=date),
        _call(
            "book_flight",
            user_id=user,
            flight_id=fid,
            cabin=reservation["cabin"],
            passengers=reservation["passengers"],
        ),
    ]
    new_rid = _booked(db, user, actions)
    refund = str(reservation["paid"])
    request = (
        f"Please cancel {rid} and book the cheapest available flight on the same route on {date} instead, with the "
        "same cabin and passengers."
    )
    answer = f"{rid} is cancelled with a refund of {refund}. Your new reservation is {new_rid} on {fid}."
    return _Draft(user, request, actions, answer, [refund, new_rid])


def _flight_status(db, rng):
    # Two facts: a status alone (three values) could be guessed without calling a tool.
    fid = rng.choice(sorted(db["flights"]))
    status, price = db["flights"][fid]["status"], str(db["flights"][fid]["price"])
    request = rng.choice(
        ("What is the status and price of flight {fid}?", "Is flight {fid} on time, and what does it cost?")
    )
    user = rng.choice(sorted(db["users"]))
    answer = f"Flight {fid} is {status} and costs {price}."
    return _Draft(user, request.format(fid=fid), [_call("get_flight", flight_id=fid)], answer, [status, price])


def _which_flight(db, rng):
    rid = rng.choice(sorted(db["reservations"]))
    reservation, flight = db["reservations"][rid], _flight_of(db, rid)
    fid = reservation["flight_id"]
    answer = f"Reservation {rid} is on flight {fid} from {flight['origin']} to {flight['destination']}."
    request = f"Which flight is my reservation {rid} on?"
    return _Draft(reservation["user_id"], request, [_call("get_reservation", reservation_id=rid)], answer, [fid])


def _cheapest_info(db, rng):
    options = [s for s in _searches(db) if _cheapest(db, *s, 1)]
    if not options:
        return None
    origin, destination, date = rng.choice(options)
    fid = _cheapest(db, origin, destination, date, 1)
    price = str(db["flights"][fid]["price"])
    actions = [_call("search_flights", origin=origin, destination=destination, date=date)]
    request = f"What is the cheapest available flight from {origin} to {destination} on {date}?"
    answer = f"The cheapest available flight is {fid} at {price}."
    return _Draft(rng.choice(sorted(db["users"])), request, actions, answer, [fid, price])


def _my_reservations(db, rng):
    user = rng.choice(sorted(db["users"]))
    reservations = db["users"][user]["reservations"]
    request = rng.choice(("Which reservations do I have?", "Can you list my reservations?"))
    answer = f"You have these reservations: {', '.join(reservations)}."
    return _Draft(user, request, [_call("get_user", user_id=user)], answer, list(reservations))


def _cancel_basic(db, rng):
    options = [rid for rid in _active(db) if not is_refundable(db["reservations"][rid], _flight_of(db, rid))]
    if not options:
        return None
    rid = rng.choice(options)
    answer = f"Sorry, I cannot cancel {rid}: basic economy is not refundable unless the airline cancels the flight."
    user = db["reservations"][rid]["user_id"]
    return _Draft(
        user, rng.choice(_CANCEL).format(rid=rid), [_call("get_reservation", reservation_id=rid)], answer, []
    )


def _cancel_not_owner(db, rng):
    rid = rng.choice(_active(db) or [None])
    if rid is None:
        return None
    user = rng.choice(sorted(set(db["users"]) - {db["reservations"][rid]["user_id"]}))
    answer = f"Sorry, {rid} is not your reservation, so I cannot cancel it."
    return _Draft(
        user, rng.choice(_CANCEL).format(rid=rid), [_call("get_reservation", reservation_id=rid)], answer, []
    )


def _remove_bags(db, rng):
    options = [rid for rid in _active(db) if db["reservations"][rid]["bags"] > 0]
    if not options:
        return None
    rid = rng.choice(options)
    bags = rng.randint(0, db["reservations"][rid]["bags"] - 1)
    request = rng.choice(_BAGS).format(rid=rid, bags=bags)
    answer = "Sorry, checked bags can be added but never removed."
    user = db["reservations"][rid]["user_id"]
    return _Draft(user, request, [_call("get_reservation", reservation_id=rid)], answer, [])


def _too_many_bags(db, rng):
    rid = rng.choice(_active(db) or [None])
    if rid is None:
        return None
    limit = MAX_BAGS_PER_PASSENGER * db["reservations"][rid]["passengers"]
    request = rng.choice(_BAGS).format(rid=rid, bags=limit + rng.randint(1, 2))
    answer = f"Sorry, {rid} can have at most {limit} checked bags."
    user = db["reservations"][rid]["user_id"]
    return _Draft(user, request, [_call("get_reservation", reservation_id=rid)], answer, [])


def _book_unavailable(db, rng):
    options = [fid for fid, flight in db["flights"].items() if flight["status"] == "cancelled" or flight["seats"] < 3]
    if not options:
        return None
    fid = rng.choice(options)
    flight = db["flights"][fid]
    if flight["status"] == "cancelled":
        passengers = rng.randint(1, 3)
        answer = f"Sorry, {fid} is cancelled, so I cannot book it."
    else:
        passengers = rng.randint(flight["seats"] + 1, 3)
        answer = f"Sorry, {fid} only has {quantity(flight['seats'], 'seat')} left."
    request = rng.choice(_BOOK).format(
        fid=fid, cabin=rng.choice(("basic", "economy")), passengers=quantity(passengers, "passenger")
    )
    user = rng.choice(sorted(db["users"]))
    return _Draft(user, request, [_call("get_flight", flight_id=fid)], answer, [])


def _transfer(request: str, summary: str, pick: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None):
    """A transfer builder: the user asks about an active reservation for something no tool can do."""

    def build(db, rng):
        options = [
            rid
            for rid in _active(db)
            if pick is None or pick(db["reservations"][rid], db["flights"][db["reservations"][rid]["flight_id"]])
        ]
        if not options:
            return None
        rid = rng.choice(options)
        reservation = db["reservations"][rid]
        fields = {
            "rid": rid,
            "fid": reservation["flight_id"],
            "status": db["flights"][reservation["flight_id"]]["status"],
        }
        actions = [_call("transfer_to_human", summary=summary.format(**fields))]
        return _Draft(reservation["user_id"], request.format(**fields), actions, _TRANSFER_ANSWER, [])

    return build


_BUILDERS: dict[str, tuple[str, Callable[[dict[str, Any], random.Random], _Draft | None]]] = {
    "cancel": ("action", _cancel),
    "set_bags": ("action", _set_bags),
    "book_flight": ("action", _book_flight),
    "book_cheapest": ("action", _book_cheapest),
    "rebook": ("action", _rebook),
    "flight_status": ("information", _flight_status),
    "which_flight": ("information", _which_flight),
    "cheapest": ("information", _cheapest_info),
    "my_reservations": ("information", _my_reservations),
    "cancel_basic": ("no_action", _cancel_basic),
    "cancel_not_owner": ("no_action", _cancel_not_owner),
    "remove_bags": ("no_action", _remove_bags),
    "too_many_bags": ("no_action", _too_many_bags),
    "book_unavailable": ("no_action", _book_unavailable),
    "lost_bag": ("transfer", _transfer("My bag was lost on flight {fid}. Can you find it?", "lost bag on {fid}")),
    "name_change": ("transfer", _transfer("Please change the passenger name on {rid}.", "name change on {rid}")),
    "change_date": ("transfer", _transfer("Please move reservation {rid} to another date.", "date change on {rid}")),
    "upgrade": (
        "transfer",
        _transfer(
            "Please upgrade {rid} to business.", "upgrade {rid} to business", lambda r, f: r["cabin"] != "business"
        ),
    ),
    "compensation": (
        "transfer",
        _transfer(
            "My flight {fid} was {status}. I want compensation.",
            "compensation for {fid}",
            lambda r, f: f["status"] != "on time",
        ),
    ),
}

KINDS: dict[str, str] = {kind: category for kind, (category, _) in _BUILDERS.items()}
"""Every task kind and its τ-bench-style category."""


def split_of(db_seed: int) -> str:
    """The split a database seed belongs to: `"test"` for one seed in five (by hash), `"train"` otherwise."""
    digest = hashlib.sha256(f"offline-airline-split-{db_seed}".encode()).digest()
    return "test" if digest[0] % 5 == 0 else "train"


def make_task(kind: str, db_seed: int) -> Task | None:
    """Builds the task of `kind` on the database `make_db(db_seed)`, or returns None if that database has no fit.

    The expert's actions are replayed on a fresh database to check that none of them is refused.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {sorted(_BUILDERS)}.")
    category, build = _BUILDERS[kind]
    db = make_db(db_seed)
    rng = random.Random(f"offline-airline-task-{kind}-{db_seed}")
    draft = build(db, rng)
    if draft is None:
        return None
    try:
        _replay(make_db(db_seed), draft.user_id, draft.actions)
    except ToolError as error:  # a builder bug, not a property of the data
        raise RuntimeError(f"The expert's actions for {kind}-{db_seed} are refused: {error}") from error
    return {
        "task_id": f"{kind}-{db_seed}",
        "split": split_of(db_seed),
        "category": category,
        "kind": kind,
        "db_seed": db_seed,
        "user_id": draft.user_id,
        "request": rng.choice(_GREETINGS).format(user=draft.user_id) + draft.request,
        "actions": draft.actions,
        "required_facts": draft.required_facts,
        "expert_answer": draft.expert_answer,
    }


def _quotas(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Largest-remainder allocation of `n` tasks to categories, so small `n` still follows the mix."""
    total = sum(mix.values())
    exact = {category: n * weight / total for category, weight in mix.items()}
    counts = {category: int(value) for category, value in exact.items()}
    by_remainder = sorted(exact, key=lambda category: (counts[category] - exact[category], category))
    for category in by_remainder[: n - sum(counts.values())]:
        counts[category] += 1
    return counts


def make_tasks(n: int, seed: int = 0, split: str = "train", mix: dict[str, float] | None = None) -> list[Task]:
    """Generates `n` distinct tasks of one split.

    Args:
        n: number of tasks.
        seed: generation seed; the same `(n, seed, split, mix)` always gives the same list.
        split: `"train"` or `"test"`. The splits never share a database, hence never share a task.
        mix: category weights, defaults to `DEFAULT_MIX` (action 0.4, information 0.25, no_action 0.2,
            transfer 0.15). Counts follow the weights exactly (largest remainder); kinds rotate within a category.

    Returns:
        A shuffled list of task dicts.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    mix = DEFAULT_MIX if mix is None else mix
    unknown = set(mix) - set(CATEGORIES)
    if unknown or any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix must map categories {CATEGORIES} to non-negative weights, got {mix!r}.")
    rng = random.Random(f"offline-airline-tasks-{split}-{seed}")
    tasks, seen = [], set()
    for category, count in _quotas(n, mix).items():
        kinds = [kind for kind, kind_category in KINDS.items() if kind_category == category]
        rng.shuffle(kinds)
        for i in range(count):
            kind = kinds[i % len(kinds)]
            for _ in range(1000):
                db_seed = rng.randrange(10**7)
                if split_of(db_seed) == split and f"{kind}-{db_seed}" not in seen:
                    task = make_task(kind, db_seed)
                    if task is not None:
                        break
            else:
                raise RuntimeError(f"Could not generate a {kind} task in 1000 tries.")
            seen.add(task["task_id"])
            tasks.append(task)
    rng.shuffle(tasks)
    return tasks


def task_from_id(task_id: str) -> Task:
    """Rebuilds a generated task from its id (`f"{kind}-{db_seed}"`)."""
    kind, _, db_seed = task_id.rpartition("-")
    task = make_task(kind, int(db_seed)) if kind in KINDS and db_seed.isdigit() else None
    if task is None:
        raise ValueError(f"{task_id!r} is not the id of a generated offline-airline task.")
    return task


def load_task(task: str | Task) -> Task:
    """Accepts a task dict or its JSON string (the `task` dataset column)."""
    return json.loads(task) if isinstance(task, str) else task


def expert_actions(task: str | Task) -> list[ToolCall]:
    """The scripted expert's tool calls for `task`, in order, as `{"name": ..., "arguments": {...}}` dicts."""
    return copy.deepcopy(load_task(task)["actions"])


@functools.lru_cache(maxsize=4096)
def _gold_db_hash(db_seed: int, user_id: str, actions_json: str) -> str:
    db = make_db(db_seed)
    _replay(db, user_id, json.loads(actions_json))
    return db_hash(db)


def gold_db_hash(task: str | Task) -> str:
    """Hash of the gold end state: the expert's actions applied to a fresh database (cached)."""
    task = load_task(task)
    return _gold_db_hash(task["db_seed"], task["user_id"], json.dumps(task["actions"], sort_keys=True))
