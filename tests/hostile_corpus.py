"""A hostile corpus for the sanitizer: planted secrets in every form a transcript can carry them, and benign agent texts.

Everything is generated here from a seeded RNG and templates (no copied data):

- `planted_cases()`: at least 300 `Planted` cases over the categories credential, payment, account, email, phone,
  oracle and answer, each a sibling transcript (message content, function-style and flat tool calls with dict or
  JSON-string arguments, JSON, escaped JSON, YAML, headers, URLs, printed Python dicts, code) with the exact strings
  that must not reach a provider (`secrets`);
- `benign_cases()`: at least 100 `Benign` transcripts in airline, AppWorld and BFCL styles with nothing to mask, some
  chosen to look like secrets (prose after key words, ids, hashes, prices, times, UUIDs, variables in code).

`leak_report(sanitizer)` runs both through `Sanitizer.sanitize` and returns the leaks and false positives.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass, field
from typing import Any

from trl_sgcd.siblings import Sibling, SiblingGroup


_RNG = random.Random(20261203)
_ALNUM = string.ascii_letters + string.digits


def _rand(n: int, alphabet: str = _ALNUM) -> str:
    while True:
        s = "".join(_RNG.choice(alphabet) for _ in range(n))
        if alphabet != _ALNUM or (any(c.isdigit() for c in s) and any(c.isupper() for c in s)):
            return s


def _b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(_RNG.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        digits = body + check
        total = sum(
            (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d for i, d in enumerate(map(int, reversed(digits)))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError


def _iban(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(ch, 36)) for ch in rearranged)) % 97
    return f"{country}{check:02d}{bban}"


@dataclass
class Planted:
    category: str
    form: str
    messages: list[dict[str, Any]]
    secrets: tuple[str, ...]
    literals: tuple[Any, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def group(self) -> SiblingGroup:
        metadata = dict(self.metadata)
        if self.literals:
            metadata["answer_literals"] = list(self.literals)
        failure = Sibling([{"role": "assistant", "content": "I could not finish the task."}], 0.0, False)
        return SiblingGroup(
            prompt=[{"role": "user", "content": "Please help me with my request."}],
            siblings=[Sibling(self.messages, 1.0, True), failure],
            metadata=metadata,
        )


@dataclass
class Benign:
    style: str
    messages: list[dict[str, Any]]

    def group(self) -> SiblingGroup:
        return SiblingGroup(
            prompt=[{"role": "user", "content": "Help."}], siblings=[Sibling(self.messages, 1.0, True)]
        )


# ------------------------------------------------------------------------------------------------ carriers


def _tool(content: str, name: str = "lookup") -> list[dict[str, Any]]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}}
    return [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "name": name, "content": content},
    ]


def _say(role: str, text: str) -> list[dict[str, Any]]:
    return [{"role": role, "content": text}]


def _fn_call(arguments: dict[str, Any], as_json: bool, name: str = "update_profile") -> list[dict[str, Any]]:
    args: Any = json.dumps(arguments, ensure_ascii=False) if as_json else arguments
    call = {"id": "call_2", "type": "function", "function": {"name": name, "arguments": args}}
    return [{"role": "assistant", "content": None, "tool_calls": [call]}]


def _flat_call(arguments: dict[str, Any], as_json: bool, name: str = "update_profile") -> list[dict[str, Any]]:
    args: Any = json.dumps(arguments, ensure_ascii=False) if as_json else arguments
    return [{"role": "assistant", "content": "", "tool_calls": [{"name": name, "arguments": args}]}]


# ------------------------------------------------------------------------------------------------ credentials


def _private_key(kind: str) -> tuple[str, str]:
    lines = [_rand(64, _ALNUM + "+/") for _ in range(4)]
    block = f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"
    return block, lines[1]


def _vendor_secrets() -> list[tuple[str, str, str]]:
    """(name, text to plant, string that must not leak)."""
    header = _b64url({"alg": "HS256", "typ": "JWT"})
    payload = _b64url({"sub": "user-4821", "scope": "bookings:write", "exp": 1893456000})
    jwt = f"{header}.{payload}.{_rand(43, _ALNUM + '-_')}"
    unsigned = f"{_b64url({'alg': 'none'})}.{payload}."
    out = [
        ("stripe_live", "sk_live_" + _rand(32), None),
        ("stripe_restricted", "rk_live_" + _rand(28), None),
        ("stripe_test", "sk_test_" + _rand(26), None),
        ("gitlab_pat", "glpat-" + _rand(20, _ALNUM + "-_"), None),
        ("aws_access_key", "AKIA" + _rand(16, string.ascii_uppercase + string.digits), None),
        ("aws_secret_key", _rand(40, _ALNUM + "/+"), None),
        ("github_classic", "ghp_" + _rand(36), None),
        ("github_fine", "github_pat_" + _rand(22) + "_" + _rand(59), None),
        ("slack_bot", "xoxb-" + _rand(12, string.digits) + "-" + _rand(13, string.digits) + "-" + _rand(24), None),
        ("openai", "sk-proj-" + _rand(48, _ALNUM + "-_"), None),
        ("anthropic", "sk-ant-api03-" + _rand(40, _ALNUM + "-_"), None),
        ("huggingface", "hf_" + _rand(34), None),
        ("google", "AIza" + _rand(35, _ALNUM + "-_"), None),
        ("sendgrid", "SG." + _rand(22) + "." + _rand(43), None),
        ("npm", "npm_" + _rand(36), None),
        ("telegram", _rand(9, string.digits) + ":" + _rand(35, _ALNUM + "_-"), None),
        ("jwt", jwt, None),
        ("jwt_empty_signature", unsigned, payload),
        ("high_entropy", _rand(32, _ALNUM + "+/"), None),
    ]
    for kind in ("RSA ", "", "OPENSSH ", "EC "):
        block, body_line = _private_key(kind)
        out.append((f"private_key_{kind.strip().lower() or 'pkcs8'}", block, body_line))
    return [(name, text, check or text) for name, text, check in out]


def _credential_cases() -> list[Planted]:
    cases = []
    vendor_carriers = (
        ("tool_text", lambda v: _tool(f"Config loaded. Active key {v} (rotated 3 days ago).")),
        ("assistant_prose", lambda v: _say("assistant", f"I authenticated with {v} and the call succeeded.")),
        ("json_note", lambda v: _tool(json.dumps({"status": "ok", "note": f"use {v} for retries"}))),
        ("flat_call_dict", lambda v: _flat_call({"config": {"value": v}}, as_json=False, name="configure")),
    )
    for name, text, check in _vendor_secrets():
        for form, carrier in vendor_carriers:
            cases.append(Planted("credential", f"{name}/{form}", carrier(text), (check,)))
    values = [
        "hunter2-Airline!",
        "Tr0ub4dor&3",
        "letmein2024",
        "s3cr3t!!",
        "Qw3rty#Pass",
        "blue-Falcon-88",
        "Zx9-kettle-Moon",
        "pa55word",
        "9f8e7d6c5b4a",
        "Winter2026!",
    ]
    keys = [
        "password",
        "pass",
        "passphrase",
        "accessToken",
        "clientSecret",
        "SecretAccessKey",
        "X-Api-Key",
        "AWS_SECRET_ACCESS_KEY",
        "refresh_token",
        "new_password",
        "pwd",
        "api-key",
    ]
    keyed_forms = (
        ("json", lambda k, v: _tool(json.dumps({"user": "mia_li_3668", k: v}))),
        ("flat_call_dict", lambda k, v: _flat_call({"username": "mia", k: v}, as_json=False, name="login")),
        ("flat_call_json", lambda k, v: _flat_call({"username": "mia", k: v}, as_json=True, name="login")),
        ("function_call_json", lambda k, v: _fn_call({"username": "mia", k: v}, as_json=True, name="login")),
        ("escaped_json", lambda k, v: _tool(f'Response body: {{\\"ok\\": true, \\"{k}\\": \\"{v}\\"}}')),
        ("yaml_next_line", lambda k, v: _tool(f"service:\n  name: billing\n  {k}:\n    {v}\n  region: eu\n")),
        ("angle", lambda k, v: _tool(f"Set {k}=<{v}> for the account.")),
        ("fullwidth_colon", lambda k, v: _tool(f"{k}：{v}")),
        ("text_line", lambda k, v: _tool(f"Account created.\n{k}: {v}\nPlease log in.")),
        ("query_string", lambda k, v: _tool(f"GET https://api.example.com/v2/login?user=mia&{k}={v}&lang=en")),
        ("python_dict", lambda k, v: _tool(str({"user": "mia", k: v, "active": True}))),
        ("code_kwarg", lambda k, v: _fn_call({"code": f"apis.bank.login(username='mia', {k}='{v}')"}, True, "run")),
    )
    i = 0
    for form, carrier in keyed_forms:
        for v in values:
            key = keys[i % len(keys)]
            i += 1
            if form in ("code_kwarg",) and not key.replace("_", "").isalnum():
                key = "password"
            cases.append(Planted("credential", f"keyed/{form}/{key}", carrier(key, v), (v,)))
    for v in values[:6]:
        cases.append(
            Planted("credential", "user_says_password_is", _say("user", f"My password is {v} by the way."), (v,))
        )
    token = _rand(40, _ALNUM + "-_")
    basic = base64.b64encode(b"mia:" + _rand(12).encode()).decode()
    headers = [
        (f"Authorization: Token {token}", token),
        (f"authorization: basic {basic}", basic),
        (f"Proxy-Authorization: Bearer {token}", token),
        (f"AUTHORIZATION: bearer {token}", token),
        (f"Cookie: session={token}", token),
    ]
    for h, secret in headers:
        cases.append(Planted("credential", "header", _tool(f"HTTP/1.1 401\n{h}\nContent-Type: text/plain"), (secret,)))
        cases.append(Planted("credential", "header_json", _tool(json.dumps({"headers": h})), (secret,)))
    for v in values[6:]:
        cases.append(Planted("credential", "cli_flag", _tool(f"$ mysql -u root --password {v} -h db.internal"), (v,)))
        cases.append(
            Planted("credential", "xml_element", _tool(f"<auth><user>mia</user><password>{v}</password></auth>"), (v,))
        )
        cases.append(Planted("credential", "arrow", _tool(f"password -> {v}"), (v,)))
    for v in values[:4]:
        env = [{"name": "MODE", "value": "prod"}, {"name": "DB_PASSWORD", "value": v}]
        cases.append(Planted("credential", "name_value_pairs", _tool(json.dumps(env)), (v,)))
        code = f'os.environ["API_KEY"] = "{v}"\nrun()'
        cases.append(Planted("credential", "subscript_assignment", _fn_call({"code": code}, True, "execute"), (v,)))
    for v in values[4:6]:
        form = f'<form><input name="user" value="mia"><input type="password" name="pw" value="{v}"></form>'
        cases.append(Planted("credential", "html_form", _tool(form), (v,)))
    for v in ("4821", "913", "482193"):
        cases.append(Planted("credential", "pin_spaced", _say("user", f"the pin 4{v} should work"), (f"4{v}",)))
    cases.append(Planted("credential", "ssn_text", _say("user", "SSN 123-45-6789 if you need it"), ("123-45-6789",)))
    url_pw = _rand(14)
    cases.append(
        Planted("credential", "url_userinfo", _tool(f"db=postgres://admin:{url_pw}@db.internal:5432/app"), (url_pw,))
    )
    return cases


# ------------------------------------------------------------------------------------------------ domain values


def _payment_cases() -> list[Planted]:
    cases = []
    visa, master, amex = _luhn_complete("4", 16), _luhn_complete("51", 16), _luhn_complete("37", 15)
    formats = [
        ("plain", visa),
        ("spaces", " ".join(visa[i : i + 4] for i in range(0, 16, 4))),
        ("dashes", "-".join(master[i : i + 4] for i in range(0, 16, 4))),
        ("dots", ".".join(visa[i : i + 4] for i in range(0, 16, 4))),
        ("double_spaces", "  ".join(master[i : i + 4] for i in range(0, 16, 4))),
        ("amex", f"{amex[:4]} {amex[4:10]} {amex[10:]}"),
    ]
    carriers = (
        ("tool_text", lambda v: _tool(f"Card on file: {v}, expires 11/27.")),
        ("user_prose", lambda v: _say("user", f"Please charge my card {v} for the upgrade.")),
        ("json_note", lambda v: _tool(json.dumps({"note": f"customer read out {v}"}))),
        ("flat_call", lambda v: _flat_call({"payment": {"card": v}}, as_json=True, name="pay")),
        ("keyed_text", lambda v: _tool(f"Card number: {v}\nStatus: active")),
    )
    for fname, v in formats:
        for cname, carrier in carriers:
            cases.append(Planted("payment", f"card_{fname}/{cname}", carrier(v), (v,)))
    for pid in ("credit_card_4421486", "gift_card_7219486", "certificate_3301928"):
        cases.append(Planted("payment", "payment_id/text", _say("assistant", f"I will use {pid} for this."), (pid,)))
        cases.append(Planted("payment", "payment_id/json", _tool(json.dumps({"payment_id": pid})), (pid,)))
    cases.append(Planted("credential", "cvv_key", _tool('{"cvv": "913", "expiry": "11/27"}'), ("913",)))
    cases.append(Planted("payment", "expiration_key", _fn_call({"expirationDate": "11/2027"}, True), ("11/2027",)))
    return cases


def _account_cases() -> list[Planted]:
    cases = []
    de, gb, fr = (
        _iban("DE", "370400440532013000"),
        _iban("GB", "WEST12345698765432"),
        _iban("FR", "20041010050500013M02606"),
    )
    variants = [
        ("compact", de),
        ("spaced", " ".join(gb[i : i + 4] for i in range(0, len(gb), 4))),
        ("lowercase", de.lower()),
        ("dashed", "-".join(fr[i : i + 4] for i in range(0, len(fr), 4))),
        ("lower_spaced", " ".join(gb.lower()[i : i + 4] for i in range(0, len(gb), 4))),
    ]
    for vname, v in variants:
        cases.append(Planted("account", f"iban_{vname}/tool_text", _tool(f"Refund goes to {v} within 5 days."), (v,)))
        cases.append(Planted("account", f"iban_{vname}/user", _say("user", f"my IBAN is {v}"), (v,)))
        cases.append(Planted("account", f"iban_{vname}/flat", _flat_call({"target": v}, False, "transfer"), (v,)))
    keyed = [
        ("account_number", "004512398877"),
        ("routingNumber", "021000021"),
        ("Routing number", "026009593"),
        ("acct_no", "77881234"),
        ("bank account", "000123456789"),
        ("sort-code", "12-34-56"),
        ("SWIFT", "DEUTDEFF500"),
        ("Account Number", "9876 5432 1098"),
    ]
    for key, v in keyed:
        cases.append(Planted("account", f"keyed_text/{key}", _tool(f"{key}: {v}\nBranch: Main St"), (v,)))
        cases.append(Planted("account", f"keyed_json/{key}", _tool(json.dumps({key: v})), (v,)))
        cases.append(Planted("account", f"keyed_eq/{key}", _tool(f"{key.replace(' ', '_')}={v}&ok=1"), (v,)))
    return cases


def _email_cases() -> list[Planted]:
    cases = []
    emails = [
        "mia.li3818@example.com",
        "jane_roe+travel@mail.example.co.uk",
        "josé.garcía@exämple.es",
        "用户@例子.广告",
        "müller@münchen.de",
        "ivan@пример.рф",
        "UPPER.Case@Example.ORG",
    ]
    carriers = (
        ("tool_text", lambda v: _tool(f"Confirmation sent to {v}.")),
        ("user_prose", lambda v: _say("user", f"You can reach me at {v}, thanks")),
        ("json_other_key", lambda v: _tool(json.dumps({"contact": v}, ensure_ascii=False))),
        ("query_string", lambda v: _tool(f"https://example.com/unsubscribe?email={v}&list=7")),
        ("mailto", lambda v: _tool(f'<a href="mailto:{v}">write us</a>')),
    )
    for v in emails:
        for cname, carrier in carriers:
            cases.append(Planted("email", f"{cname}", carrier(v), (v,)))
    for v in emails[:2]:
        encoded = v.replace("@", "%40")
        cases.append(Planted("email", "url_encoded", _tool(f"GET /api/users?email={encoded}&page=1"), (encoded,)))
    return cases


def _phone_cases() -> list[Planted]:
    cases = []
    phones = [
        "+44 20 7946 0958",
        "+49 (0)30 123456",
        "0044 20 7946 0958",
        "(555) 123-4567",
        "555.123.4567",
        "555-123-4567",
        "+1-415-555-0142",
        "+33 1 23 45 67 89",
        "+81 3-1234-5678",
        "+1 (415) 555-0142",
    ]
    carriers = (
        ("tool_text", lambda v: _tool(f"Hotel front desk: call {v} after 6pm.")),
        ("user_prose", lambda v: _say("user", f"my number is {v}")),
        ("json_note", lambda v: _tool(json.dumps({"note": f"callback {v}"}))),
        ("keyed_text", lambda v: _tool(f"Phone: {v}\nName: Mia Li")),
    )
    for v in phones:
        for cname, carrier in carriers:
            cases.append(Planted("phone", cname, carrier(v), (v,)))
    return cases


def _oracle_cases() -> list[Planted]:
    cases = []
    keys = [
        "answer",
        "label",
        "solution",
        "correct_answer",
        "expectedAnswer",
        "ground-truth",
        "Ground Truth",
        "gold",
        "judge_feedback",
        "evaluation",
        "rubric",
        "goldActions",
        "expected answer",
        "reward_info",
        "possible_answer",
        "expected",
    ]
    for i, key in enumerate(keys):
        v = f"cancel-{_rand(6, string.ascii_uppercase + string.digits)}-refund"
        cases.append(Planted("oracle", f"json/{key}", _tool(json.dumps({"status": "done", key: v})), (v,)))
        cases.append(Planted("oracle", f"system_line/{key}", _say("system", f"Task 7.\n{key}: {v}\nBe brief."), (v,)))
        cases.append(Planted("oracle", f"tool_line/{key}", _tool(f"Result saved.\n{key}: {v}"), (v,)))
        if i % 2 == 0:
            cases.append(Planted("oracle", f"yaml/{key}", _tool(f"task:\n  id: 7\n  {key}:\n    {v}\n"), (v,)))
        else:
            cases.append(Planted("oracle", f"flat_call/{key}", _flat_call({key: v}, True, "submit"), (v,)))
    for tag in ("gold", "answer", "Ground_Truth", "solution", "EVALUATION", "rubric", "expected_answer", "label"):
        v = f"path-{_rand(6, string.ascii_uppercase + string.digits)}"
        text = f"Notes follow. <{tag}>call {v} first</{tag}> end."
        cases.append(Planted("oracle", f"tag/{tag}", _tool(text), (v,)))
        cases.append(Planted("oracle", f"tag_attr/{tag}", _say("system", f'<{tag} source="grader">{v}</{tag}>'), (v,)))
    v = f"gold-{_rand(8)}"
    cases.append(Planted("oracle", "metadata", _say("assistant", "ok"), (v,), metadata={"ground_truth": v}))
    return cases


def _answer_cases() -> list[Planted]:
    pairs = [
        (1250, "$1,250.00"),
        (1250, "1,250"),
        (1250, "1250.00"),
        ("1250", "1.250,00"),
        ("$1,250.00", "1250"),
        (42, "42.0"),
        ("42", "42.00"),
        ("USD 980", "980"),
        (3.5, "3.50"),
        ("New York", "new  york"),
        ("ZFA04Y", "zfa04y"),
        ("Paris", "PARIS"),
        ("1 250", "1250"),
        ("€1.250,00", "1,250.00"),
    ]
    cases = []
    for literal, text in pairs:
        carriers = (
            ("assistant", _say("assistant", f"The total comes to {text} after taxes.")),
            ("tool_json", _tool(json.dumps({"result": f"{text}"}))),
            ("flat_call", _flat_call({"value": text}, True, "submit")),
        )
        for cname, messages in carriers:
            cases.append(Planted("answer", f"{literal}->{text}/{cname}", messages, (text,), literals=(literal,)))
    return cases


def planted_cases() -> list[Planted]:
    return [
        *_credential_cases(),
        *_payment_cases(),
        *_account_cases(),
        *_email_cases(),
        *_phone_cases(),
        *_oracle_cases(),
        *_answer_cases(),
    ]


# ------------------------------------------------------------------------------------------------ benign texts

_CITIES = [("JFK", "SFO"), ("ORD", "LAX"), ("BOS", "SEA"), ("MIA", "DEN"), ("ATL", "PHX"), ("EWR", "LAS")]
_NAMES = [("Mia", "Li"), ("Omar", "Hassan"), ("Sofia", "Rossi"), ("Liam", "Chen"), ("Ava", "Patel"), ("Noah", "Kim")]


def _airline(i: int) -> Benign:
    origin, dest = _CITIES[i % len(_CITIES)]
    first, last = _NAMES[i % len(_NAMES)]
    flight = f"HAT{100 + 17 * i}"
    code = "".join(_RNG.choice(string.ascii_uppercase + string.digits) for _ in range(6))
    day = 10 + i % 18
    price = 80 + 13 * i
    flights = [
        {
            "flight_number": flight,
            "origin": origin,
            "destination": dest,
            "scheduled_departure_time_est": f"{6 + i % 12:02d}:{(7 * i) % 60:02d}:00",
            "status": "available",
            "available_seats": {"basic_economy": 9 - i % 9, "economy": 12, "business": 3},
            "prices": {"basic_economy": price, "economy": price + 74, "business": price + 318},
        }
    ]
    reservation = {
        "reservation_id": code,
        "user_id": f"{first.lower()}_{last.lower()}_{1000 + i * 37}",
        "origin": origin,
        "destination": dest,
        "flight_type": "one_way",
        "cabin": "economy",
        "flights": [{"flight_number": flight, "date": f"2024-05-{day:02d}", "price": price + 74}],
        "passengers": [{"first_name": first, "last_name": last, "dob": f"19{70 + i % 29}-0{1 + i % 9}-1{i % 10}"}],
        "created_at": f"2024-05-0{1 + i % 9}T09:{10 + i % 50}:30",
        "total_baggages": i % 3,
        "nonfree_baggages": 0,
        "insurance": "no",
        "membership": ["regular", "silver", "gold"][i % 3],
    }
    variants = [
        _say(
            "user",
            f"Hi, I need to change my flight {flight} from {origin} to {dest} on May {day}. My reservation is {code}.",
        ),
        _fn_call({"reservation_id": code}, i % 2 == 0, "get_reservation_details"),
        _tool(json.dumps(reservation), "get_reservation_details"),
        _flat_call(
            {"origin": origin, "destination": dest, "date": f"2024-05-{day:02d}"}, i % 2 == 1, "search_direct_flight"
        ),
        _tool(json.dumps(flights), "search_direct_flight"),
        _say(
            "assistant",
            [
                f"The cheapest option is {flight} at ${price} in basic economy; basic economy cannot be changed later. "
                "Shall I proceed? (yes/no)",
                f"Evaluation: the cheaper flight is {flight}, departing at {6 + i % 12}:00, so I recommend it.",
                "Password: must be reset on the website, I cannot do that for you.",
                f"Your total is ${price + 74}.00 for 1 passenger; the refund of ${price} arrives in 5-7 business days.",
                f"I have updated reservation {code}: cabin upgraded to business, 2 checked bags, no insurance.",
                "Answer: yes, the flight is on time and boards at gate B12.",
            ][i % 6],
        ),
        _tool(
            [
                "Policy: the token of appreciation is a $50 certificate, issued once per reservation.",
                "Note: the boarding pass is emailed 24 hours before departure.",
                f"Flight {flight} status: delayed 45 minutes; new departure 10:{i % 50 + 10}.",
                "Basic economy cannot be modified. Label: standard fare rules apply to all passengers.",
            ][i % 4],
            "get_policy",
        ),
    ]
    return Benign("airline", [m for v in variants for m in v])


_SONGS = ["Midnight Drive", "Paper Boats", "Golden Hour", "Slow Rivers", "Neon Rain", "Quiet Harbor", "Last Light"]


def _appworld(i: int) -> Benign:
    app = ["spotify", "venmo", "todoist", "gmail", "amazon", "splitwise"][i % 6]
    code = [
        f"access_token = apis.{app}.login(username=username, password=password)['access_token']\n"
        f"items = apis.{app}.show_library(access_token=access_token, page_index={i % 4})\nprint(len(items))",
        f"token = apis.{app}.login(username=profile['email'], password=passwords['{app}'])['access_token']\n"
        f"print(apis.{app}.show_profile(access_token=token))",
        "for page in range(5):\n    songs = apis.spotify.show_song_library(access_token=spotify_token, page_index=page)\n"
        "    if not songs:\n        break\n    total += sum(s['play_count'] for s in songs)",
        "apis.supervisor.complete_task(status='success')",
        f"print(apis.api_docs.show_api_doc(app_name='{app}', api_name='show_transactions'))",
    ][i % 5]
    rows = [
        {
            "song_id": 10 + i + k,
            "title": _SONGS[(i + k) % len(_SONGS)],
            "album_id": 3 + k,
            "duration": 180 + 7 * k + i,
            "play_count": 1000 + 37 * i + k,
            "liked_at": f"2023-0{1 + k}-1{i % 10}T10:2{k}:01",
        }
        for k in range(3)
    ]
    doc = {
        "app_name": app,
        "api_name": "show_transactions",
        "parameters": [
            {
                "name": "access_token",
                "type": "string",
                "required": True,
                "description": f"Access token from {app} login.",
            },
            {"name": "page_limit", "type": "integer", "required": False, "default": 5},
        ],
        "response_schema": {"transaction_id": 1, "amount": 0.0, "created_at": "2019-01-01T00:00:00"},
    }
    output = [str(rows), "Execution successful.", str(doc), f"{1000 + i * 91}", f"Total play count: {3000 + 111 * i}"][
        i % 5
    ]
    messages = [
        *_say("user", f"Using these APIs, find how many songs in my {app} library were liked this year."),
        *_fn_call({"code": code}, i % 2 == 0, "execute"),
        *_tool(output, "execute"),
        *_say(
            "assistant",
            [
                "The library has 3 songs liked this year; the most played is "
                f"'{_SONGS[i % len(_SONGS)]}' with {1000 + 37 * i} plays.",
                f"I paged through {i % 4 + 1} pages with the access token from login and summed the play counts.",
                f"Commit 3f2c1e9a7b{i:02d}d4e5f60718293a4b5c6d7e8f901 and request id 550e8400-e29b-41d4-a716-4466554400{i:02d} logged.",
            ][i % 3],
        ),
    ]
    return Benign("appworld", messages)


def _bfcl(i: int) -> Benign:
    calls = [
        ("calculate_triangle_area", {"base": 10 + i, "height": 5, "unit": "cm"}, f"{(10 + i) * 5 / 2}"),
        (
            "get_current_weather",
            {"location": "Boston, MA", "unit": "fahrenheit"},
            '{"temperature": 71, "sky": "clear"}',
        ),
        (
            "get_stock_price",
            {"ticker": ["AAPL", "MSFT", "NVDA"][i % 3]},
            f'{{"price": {150 + i}.84, "currency": "USD"}}',
        ),
        ("convert_currency", {"amount": 1250 + i, "from_currency": "USD", "to_currency": "EUR"}, f"{1151 + i}.25"),
        ("spotify.play", {"artist": "Taylor Swift", "duration": 20 + i}, "Playing for 20 minutes."),
        ("math.hypot", {"x": 3, "y": 4}, "5.0"),
        ("find_restaurants", {"cuisine": "thai", "max_results": 3, "page_token": "CAUQAA"}, '["Thai Basil", "Lotus"]'),
        (
            "llm.generate",
            {"prompt": "Summarize the memo", "max_tokens": 256, "temperature": 0.2},
            "The memo asks for Q3 plans.",
        ),
        (
            "get_user_orders",
            {"user_id": 4021 + i, "status": "shipped"},
            json.dumps([{"order_id": f"ORD-55{i:02d}", "items": 2}]),
        ),
        (
            "hash_file",
            {"path": f"/data/reports/q{i % 4 + 1}.csv", "algorithm": "sha256"},
            "9b74c9897bac770ffc029102a200c5de" + "e2b3f1a0c4d5e6f708192a3b4c5d6e7f",
        ),
    ]
    name, args, result = calls[i % len(calls)]
    messages = [
        *_say("user", f"Question {i}: use the tools to answer. What is the result of {name.split('.')[-1]}?"),
        *(_flat_call(args, i % 2 == 0, name) if i % 3 else _fn_call(args, i % 2 == 0, name)),
        *_tool(result, name),
        *_say("assistant", f"The result of {name} is {result[:40]}. I used {len(args)} arguments."),
    ]
    return Benign("bfcl", messages)


# Free-standing texts in each style, written for shapes a naive rule set masks (not generated from one template).
_LOOSE = {
    "airline": [
        "My user id is mia_li_3668 and I'm a gold member. Can I pay with the credit card on file?",
        "I need your user ID and the reservation ID to proceed; the confirmation number is on your receipt.",
        "Error: payment method not found for this user.",
        '{"payment_history": [{"amount": 94, "status": "refunded"}], "cabin": "basic_economy"}',
        "The new password policy says: at least 12 characters. Your account is fine.",
        "Secret: the lounge is on level 3 (just kidding, it's on level 2).",
        "Phone: not provided. Email: not provided.",
        "The flight number is HAT271 and the gate is B12; boarding starts at 08:45.",
        "Total: $1,250.00 (2 passengers x $625.00), paid 2024-05-14.",
        "Card ending in 4242 was charged $312.",
        "Your PIN is required at the kiosk, but I cannot see it.",
        "Expected arrival: 14:35 local time, 20 minutes early.",
        "<p>Your seat is <b>12C</b> in row 12; gate 22 closes at 09:40.</p>",
        "Flight 1234 departs from gate 22; the phone line for changes opens at 8.",
        '<form action="/search"><input name="q" value="flights to SFO"><select name="cabin">'
        '<option value="economy">Economy</option></select></form>',
    ],
    "appworld": [
        "phone_number = user['phone_number']\nemail = profile.email\nprint(phone_number, email)",
        "passwords = {row['account_name']: row['password'] for row in apis.supervisor.show_account_passwords()}",
        "api_doc = apis.api_docs.show_api_doc(app_name='phone', api_name='send_text_message')\nprint(api_doc)",
        '{"name": "password", "type": "string", "required": true, "description": "Your account password."}',
        "for tx in transactions:\n    if tx['description'].startswith('Rent'):\n        total += tx['amount']",
        "[{'id': 7, 'title': 'Buy milk', 'due_date': '2023-05-19', 'completed': False, 'priority': 2}]",
        "Answer: the task asks for the total, so I will sum the amounts.",
        "Solution idea: page through all results first, then filter by date.",
        "Token expires_at 2023-05-19T11:00:00; refresh not needed yet.",
        '[{"name": "page_limit", "value": 5}, {"name": "sort_by", "value": "created_at"}]',
        'settings["theme"] = "dark"\nsettings["page_size"] = 20',
        "apis.todoist.update_task(task_id=7, labels=['work', 'urgent'], priority=2)",
        "Run the exporter with --verbose --output report.csv --retries 3.",
        "Token 5 of 12 generated; 1532 tokens in total.",
        "access_token = login_result['access_token']\nheaders = {'Authorization': f'Bearer {access_token}'}",
    ],
    "bfcl": [
        "The answer is 42, as computed by math.factorial(4) + 18.",
        "The solution to x^2 - 4 = 0 is x = 2 or x = -2.",
        "Stock AAPL closed at 189.84 (+1.2%) on volume 51,203,112.",
        '{"name": "get_weather", "parameters": {"location": {"type": "string", "description": "City, e.g. Boston, MA"}}}',
        "plot_bar(values=[3, 5, 8], label='Revenue', color='blue')",
        "Evaluation of the integral from 0 to 1 of x^2 gives 1/3.",
        "Result: 3.14159265358979 (pi to 14 places).",
        "sha1 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 and md5 9e107d9d372bb6826bd81d3542a419d6",
        "ISBN 978-0-306-40615-7, published 1999, 352 pages.",
        "Coordinates: 40.7128, -74.0060; elevation 10 m.",
        "Pin 2 of the connector goes to ground; the SSN field is optional.",
    ],
}


def _loose(style: str, i: int, text: str) -> Benign:
    role = ("user", "assistant", "tool")[i % 3]
    return Benign(style, _tool(text) if role == "tool" else _say(role, text))


def benign_cases() -> list[Benign]:
    return [
        *(_airline(i) for i in range(40)),
        *(_appworld(i) for i in range(35)),
        *(_bfcl(i) for i in range(35)),
        *(_loose(style, i, text) for style, texts in _LOOSE.items() for i, text in enumerate(texts)),
    ]


# ------------------------------------------------------------------------------------------------ scoring


def strings_of(obj: Any) -> str:
    """Every string in a (sanitized) structure, keys included, joined by newlines: what a provider can read."""
    out: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, SiblingGroup):
            walk(o.prompt)
            walk([s.messages for s in o.siblings])
            walk(o.metadata)
        elif o is not None:
            out.append(str(o))

    walk(obj)
    return "\n".join(out)


def _canonical(group: SiblingGroup) -> Any:
    return json.loads(json.dumps([s.messages for s in group.siblings], sort_keys=True, default=str))


def leak_report(sanitizer: Any) -> dict[str, Any]:
    """Leaks per category (planted strings found after sanitizing) and false positives per style (benign changed)."""
    leaks: dict[str, list[str]] = {}
    planted: dict[str, int] = {}
    for case in planted_cases():
        planted[case.category] = planted.get(case.category, 0) + 1
        text = strings_of(sanitizer.sanitize(case.group()).group)
        for secret in case.secrets:
            if secret in text or secret.lower() in text.lower():
                leaks.setdefault(case.category, []).append(f"{case.form}: {secret!r}")
    fps: dict[str, list[str]] = {}
    benign: dict[str, int] = {}
    for case in benign_cases():
        benign[case.style] = benign.get(case.style, 0) + 1
        result = sanitizer.sanitize(case.group())
        if _canonical(result.group) != _canonical(case.group()):
            hit = ", ".join(f"{k}={v}" for k, v in result.counts.items() if v)
            fps.setdefault(case.style, []).append(hit)
    return {"planted": planted, "leaks": leaks, "benign": benign, "false_positives": fps}
