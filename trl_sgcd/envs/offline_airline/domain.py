"""The airline domain: a seeded in-memory database, the policy, and the semantics of every tool.

Everything here is pure Python on plain dicts so that the environment, the scripted expert and the gold-state replay
share one implementation of the rules. A tool operation takes the database, the verified user and clean (already
type-coerced) arguments, mutates the database for writes, and returns the observation text; a refused call raises
`ToolError`, flagged as a policy violation when the refusal is one of the written rules.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable
from typing import Any


AIRPORTS = ("BOS", "JFK", "ORD", "SFO", "LAX", "SEA")
DATES = ("05-20", "05-21", "05-22")
CABINS = ("basic", "economy", "business")
FIRST_NAMES = ("Ana", "Ben", "Cam", "Dev", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lea", "Max")

MAX_BAGS_PER_PASSENGER = 3
BAG_FEE = 40
FREE_BAGS_PER_PASSENGER = {"basic": 0, "economy": 1, "business": 2}
MAX_PASSENGERS = 9

READ_TOOLS = frozenset({"get_user", "get_reservation", "get_flight", "search_flights"})
WRITE_TOOLS = frozenset({"cancel_reservation", "update_baggage", "book_flight", "transfer_to_human"})

POLICY = "\n".join(
    [
        "You are an airline support agent. The user is already verified. Use the tools, then answer in one short "
        "message.",
        "Rules:",
        "- Only act on the user's own reservations, and only book for the user.",
        "- Look up the reservation or flight before you change or book anything.",
        "- Basic economy reservations cannot be cancelled unless the airline cancelled the flight.",
        f"- Checked bags can be added but never removed, up to {MAX_BAGS_PER_PASSENGER} per passenger.",
        "- Only book flights that are not cancelled and have enough seats.",
        "- You cannot change flights, dates, cabins or names, give compensation, or trace lost bags: transfer these "
        "requests to a human agent.",
        "- Refuse any request that breaks these rules.",
    ]
)
"""The system message: the rules the tools enforce, in words."""


class ToolError(Exception):
    """A refused tool call. `violation=True` marks a refusal required by the written policy (not a lookup error)."""

    def __init__(self, message: str, violation: bool = False):
        super().__init__(message)
        self.violation = violation


def fare(price: int, cabin: str) -> int:
    """Per-passenger fare of a cabin on a flight whose economy price is `price`."""
    return {"basic": price - 20, "economy": price, "business": 2 * price}[cabin]


def bag_fee(reservation: dict[str, Any], membership: str, bags: int) -> int:
    """Fee for going from the reservation's current checked bags to `bags`."""
    free = reservation["passengers"] * (FREE_BAGS_PER_PASSENGER[reservation["cabin"]] + (membership == "gold"))
    return BAG_FEE * (max(0, bags - free) - max(0, reservation["bags"] - free))


def is_refundable(reservation: dict[str, Any], flight: dict[str, Any]) -> bool:
    return reservation["cabin"] != "basic" or flight["status"] == "cancelled"


def is_bookable(flight: dict[str, Any], passengers: int) -> bool:
    return flight["status"] != "cancelled" and flight["seats"] >= passengers


def _generate_db(seed: int) -> dict[str, Any]:
    rng = random.Random(f"offline-airline-db-{seed}")
    # Three routes with one to three flights per date, so "cheapest flight" searches have real alternatives.
    routes = rng.sample([(o, d) for o in AIRPORTS for d in AIRPORTS if o != d], 3)
    slots = [(route, date) for route in routes for date in DATES for _ in range(rng.choice((1, 2, 2, 3)))]
    numbers = rng.sample(range(1, 100), len(slots))
    flights = {}
    for number, ((origin, destination), date) in sorted(zip(numbers, slots, strict=True)):
        flights[f"F{number}"] = {
            "origin": origin,
            "destination": destination,
            "date": date,
            "status": rng.choices(("on time", "delayed", "cancelled"), weights=(13, 4, 3))[0],
            "seats": rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 9)),
            "price": rng.randrange(80, 400, 10),
        }
    users = {}
    for number, name in zip(sorted(rng.sample(range(1, 30), 4)), rng.sample(FIRST_NAMES, 4), strict=True):
        users[f"u{number}"] = {
            "name": name,
            "membership": rng.choice(("regular", "regular", "gold")),
            "reservations": [],
        }
    counts = [rng.randint(1, 3) for _ in users]
    reservation_numbers = iter(sorted(rng.sample(range(10, 100), sum(counts))))
    reservations = {}
    for user_id, count in zip(users, counts, strict=True):
        for _ in range(count):
            reservation_id = f"r{next(reservation_numbers)}"
            flight_id = rng.choice(list(flights))
            cabin = rng.choices(CABINS, weights=(7, 9, 4))[0]
            passengers = rng.choice((1, 1, 1, 2, 2, 3))
            reservations[reservation_id] = {
                "user_id": user_id,
                "flight_id": flight_id,
                "cabin": cabin,
                "passengers": passengers,
                "bags": rng.randint(0, passengers),
                "paid": fare(flights[flight_id]["price"], cabin) * passengers,
                "status": "cancelled" if rng.random() < 0.1 else "active",
            }
            users[user_id]["reservations"].append(reservation_id)
    return {"flights": flights, "users": users, "reservations": reservations, "handoffs": []}


@functools.lru_cache(maxsize=1024)
def _db_json(seed: int) -> str:
    return json.dumps(_generate_db(seed))


def make_db(seed: int) -> dict[str, Any]:
    """Returns a fresh copy of the database generated from `seed` (4 users, 3 routes, about 18 flights).

    The same seed always gives the same database, on any machine and Python version.
    """
    return json.loads(_db_json(seed))


def db_hash(db: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the database (the τ-bench end-state check)."""
    return hashlib.sha256(json.dumps(db, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def quantity(n: int, noun: str) -> str:
    """`quantity(1, "seat")` is `"1 seat"`, `quantity(2, "seat")` is `"2 seats"`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _user(db: dict[str, Any], user_id: str) -> dict[str, Any]:
    if user_id not in db["users"]:
        raise ToolError(f"no user {user_id}.")
    return db["users"][user_id]


def _flight(db: dict[str, Any], flight_id: str) -> dict[str, Any]:
    if flight_id not in db["flights"]:
        raise ToolError(f"no flight {flight_id}.")
    return db["flights"][flight_id]


def _reservation(db: dict[str, Any], reservation_id: str) -> dict[str, Any]:
    if reservation_id not in db["reservations"]:
        raise ToolError(f"no reservation {reservation_id}.")
    return db["reservations"][reservation_id]


def _own_active_reservation(db: dict[str, Any], user: str, reservation_id: str) -> dict[str, Any]:
    reservation = _reservation(db, reservation_id)
    if reservation["user_id"] != user:
        raise ToolError(f"policy: {reservation_id} is not the user's reservation.", violation=True)
    if reservation["status"] == "cancelled":
        raise ToolError(f"{reservation_id} is already cancelled.")
    return reservation


def get_user(db: dict[str, Any], user: str, user_id: str) -> str:
    profile = _user(db, user_id)
    return _dumps({"user_id": user_id, **profile})


def get_reservation(db: dict[str, Any], user: str, reservation_id: str) -> str:
    reservation = _reservation(db, reservation_id)
    flight = db["flights"][reservation["flight_id"]]
    view = {
        "reservation_id": reservation_id,
        "user_id": reservation["user_id"],
        "flight_id": reservation["flight_id"],
        "origin": flight["origin"],
        "destination": flight["destination"],
        "date": flight["date"],
        "flight_status": flight["status"],
        **{key: reservation[key] for key in ("cabin", "passengers", "bags", "paid", "status")},
    }
    return _dumps(view)


def get_flight(db: dict[str, Any], user: str, flight_id: str) -> str:
    return _dumps({"flight_id": flight_id, **_flight(db, flight_id)})


def search_flights(db: dict[str, Any], user: str, origin: str, destination: str, date: str) -> str:
    found = [
        {"flight_id": flight_id, **{key: flight[key] for key in ("status", "seats", "price")}}
        for flight_id, flight in db["flights"].items()
        if (flight["origin"], flight["destination"], flight["date"]) == (origin, destination, date)
    ]
    return _dumps(found) if found else f"No flights from {origin} to {destination} on {date}."


def cancel_reservation(db: dict[str, Any], user: str, reservation_id: str) -> str:
    reservation = _own_active_reservation(db, user, reservation_id)
    flight = db["flights"][reservation["flight_id"]]
    if not is_refundable(reservation, flight):
        raise ToolError(
            "policy: basic economy can only be cancelled when the airline cancelled the flight.", violation=True
        )
    reservation["status"] = "cancelled"
    flight["seats"] += reservation["passengers"]
    return f"Cancelled {reservation_id}. Refund: {reservation['paid']}."


def update_baggage(db: dict[str, Any], user: str, reservation_id: str, bags: int) -> str:
    reservation = _own_active_reservation(db, user, reservation_id)
    if bags < 0:
        raise ToolError("bags must be 0 or more.")
    if bags < reservation["bags"]:
        raise ToolError("policy: checked bags cannot be removed.", violation=True)
    if bags > MAX_BAGS_PER_PASSENGER * reservation["passengers"]:
        raise ToolError(f"policy: at most {MAX_BAGS_PER_PASSENGER} checked bags per passenger.", violation=True)
    fee = bag_fee(reservation, db["users"][user]["membership"], bags)
    reservation["bags"] = bags
    reservation["paid"] += fee
    return f"Reservation {reservation_id} now has {bags} checked bags. Fee: {fee}."


def book_flight(db: dict[str, Any], user: str, user_id: str, flight_id: str, cabin: str, passengers: int) -> str:
    _user(db, user_id)
    flight = _flight(db, flight_id)
    if cabin not in CABINS:
        raise ToolError(f"cabin must be one of {', '.join(CABINS)}.")
    if not 1 <= passengers <= MAX_PASSENGERS:
        raise ToolError(f"passengers must be between 1 and {MAX_PASSENGERS}.")
    if user_id != user:
        raise ToolError("policy: you can only book for the verified user.", violation=True)
    if flight["status"] == "cancelled":
        raise ToolError(f"policy: {flight_id} is cancelled.", violation=True)
    if flight["seats"] < passengers:
        raise ToolError(f"policy: {flight_id} has only {quantity(flight['seats'], 'seat')} left.", violation=True)
    reservation_id = f"r{max(int(key[1:]) for key in db['reservations']) + 1}"
    total = fare(flight["price"], cabin) * passengers
    flight["seats"] -= passengers
    db["reservations"][reservation_id] = {
        "user_id": user_id,
        "flight_id": flight_id,
        "cabin": cabin,
        "passengers": passengers,
        "bags": 0,
        "paid": total,
        "status": "active",
    }
    db["users"][user_id]["reservations"].append(reservation_id)
    return f"Booked {reservation_id} on {flight_id} ({cabin}, {quantity(passengers, 'passenger')}). Total: {total}."


def transfer_to_human(db: dict[str, Any], user: str, summary: str) -> str:
    # The hand-off is recorded in the database so the end-state hash tells whether (and how often) it happened.
    db["handoffs"].append(user)
    return "Transferred to a human agent."


OPERATIONS: dict[str, Callable[..., str]] = {
    op.__name__: op
    for op in (
        get_user,
        get_reservation,
        get_flight,
        search_flights,
        cancel_reservation,
        update_baggage,
        book_flight,
        transfer_to_human,
    )
}


def apply_tool(db: dict[str, Any], user: str, name: str, arguments: dict[str, Any]) -> str:
    """Runs tool `name` with clean `arguments` for the verified `user`; raises `ToolError` when the call is refused."""
    return OPERATIONS[name](db, user, **arguments)
