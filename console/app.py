"""The web application: `create_app(config, redis_client, decisions)`.

Moderators (logged in): the queue (`/`), an item's incident page (`/items/<priority>/<entry id>`)
with claim, release and decide, and user lookup (`/users`). Streamers: the appeal page
(`/appeal?incident=..&user=..&expires=..&sig=..`, the notifier's link). Every POST form carries
the session's CSRF token; the moderator id of every action comes from the session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from connectors import signing
from console import desk
from console.accounts import Accounts
from console.appeal import MAX_STATEMENT, AlreadyAppealed, AppealDesk
from console.config import ConsoleConfig
from console.queue import Queue, QueueItem, format_age, format_time, log_action
from console.security import CSRF_FIELD, LoginLimiter, csrf_ok, csrf_token
from sinks.appeals import make_decision, signed_value
from sinks.notifier import AppealTokenError

TEMPLATES = Path(__file__).resolve().parent / "templates"
VERDICTS = {"review": (("confirmed", "Confirm the violation"), ("rejected", "Reject: no violation")),
            "appeal": (("granted", "Grant the appeal"), ("denied", "Deny the appeal"))}
MAX_NOTE = 2000  # decision v1's note


class DecisionSink(Protocol):
    def send(self, record: dict) -> None: ...


class KafkaDecisions:
    """Decision records to the decisions topic, keyed by user id and signed with the current
    decision key; send() returns once delivered."""

    def __init__(self, bootstrap: str, topic: str, keys: signing.DecisionKeys):
        from confluent_kafka import Producer

        self.topic, self.keys = topic, keys
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def send(self, record: dict) -> None:
        errors = []
        self.producer.produce(self.topic, key=record["user_id"].encode(), value=signed_value(record, self.keys),
                              on_delivery=lambda err, _msg: err and errors.append(err))
        if self.producer.flush(15) or errors:
            raise RuntimeError(f"the decision was not delivered to {self.topic}: {errors or 'timeout'}")


def create_app(config: ConsoleConfig, client: redis.Redis, decisions: DecisionSink,
               accounts: Accounts, clock: Callable[[], int] = lambda: int(time.time() * 1000)) -> Starlette:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals.update(format_age=format_age, CSRF_FIELD=CSRF_FIELD, MAX_NOTE=MAX_NOTE,
                                 MAX_STATEMENT=MAX_STATEMENT)
    templates.env.filters["when"] = format_time
    queue = Queue(client)
    keyring = None
    if config.audit_master_key is not None:  # the archive's sealed entries: the key store is this Redis
        from sinks.sealing import KeyRing, RedisKeyStore

        keyring = KeyRing(RedisKeyStore(client), config.audit_master_key)
    appeals = AppealDesk(client, config.appeal_secret)
    limiter = LoginLimiter(client)

    def page(request: Request, name: str, status_code: int = 200, **context) -> Response:
        context.update(moderator=request.session.get("moderator"), csrf=csrf_token(request.session))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    async def form_with_csrf(request: Request):
        form = await request.form()
        if not csrf_ok(request.session, form.get(CSRF_FIELD)):
            return None
        return form

    def bad_csrf(request: Request) -> Response:
        return page(request, "message.html", 403, title="Form expired",
                    message="This form is no longer valid (its security token did not match). "
                            "Reload the page and submit again.")

    def moderator_of(request: Request) -> str | None:
        moderator_id = request.session.get("moderator")
        return moderator_id if moderator_id in accounts.moderators else None

    def login_redirect(request: Request) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    # ---- login ----------------------------------------------------------------------------
    async def login(request: Request) -> Response:
        next_path = request.query_params.get("next", "/")
        if request.method == "GET":
            return page(request, "login.html", next_path=next_path)
        form = await form_with_csrf(request)
        if form is None:
            return bad_csrf(request)
        account, password = str(form.get("moderator_id", "")).strip(), str(form.get("password", ""))
        address = request.client.host if request.client else "-"
        if limiter.blocked(account, address):
            log_action(client, {"action": "login_blocked", "moderator_id": account, "address": address,
                                "time_ms": clock()})
            return page(request, "login.html", 429, next_path=next_path,
                        error="Too many failed attempts. Wait 15 minutes and try again.")
        moderator = accounts.authenticate(account, password)
        if moderator is None:
            limiter.failed(account, address)
            log_action(client, {"action": "login_failed", "moderator_id": account, "address": address,
                                "time_ms": clock()})
            return page(request, "login.html", 401, next_path=next_path, error="Wrong moderator id or password.")
        limiter.succeeded(account, address)
        request.session.clear()  # a new session (and CSRF token) on every login
        request.session["moderator"] = moderator.moderator_id
        log_action(client, {"action": "login", "moderator_id": moderator.moderator_id, "address": address,
                            "time_ms": clock()})
        return RedirectResponse(next_path if next_path.startswith("/") and not next_path.startswith("//") else "/",
                                status_code=303)

    async def logout(request: Request) -> Response:
        if await form_with_csrf(request) is None:
            return bad_csrf(request)
        if moderator_of(request):
            log_action(client, {"action": "logout", "moderator_id": moderator_of(request), "time_ms": clock()})
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ---- moderators -----------------------------------------------------------------------
    async def queue_page(request: Request) -> Response:
        me = moderator_of(request)
        if not me:
            return login_redirect(request)
        now = clock()
        items, summary = queue.read(now)
        holders = {item.ref: queue.holder(item) for item in items}
        return page(request, "queue.html", items=items, summary=summary, holders=holders, now_ms=now,
                    guard=queue.guard_notices())

    def item_of(request: Request) -> QueueItem | None:
        return queue.item(request.path_params["priority"], request.path_params["entry_id"])

    def gone(request: Request) -> Response:
        return page(request, "message.html", 404, title="Not in the queue",
                    message="This item is no longer in the queue: it was decided, or the link is wrong.")

    async def item_page(request: Request) -> Response:
        me = moderator_of(request)
        if not me:
            return login_redirect(request)
        item = item_of(request)
        if item is None:
            return gone(request)
        view = desk.user_view(client, config.archive_dir, item.user_id, keyring) if item.user_id else None
        records = desk.incident_records(view.history, item.incident_id) if view else []
        return page(request, "incident.html", item=item, holder=queue.holder(item), view=view,
                    review=desk.review_record(client, item.incident_id), incident_records=records,
                    verdicts=VERDICTS[item.kind], now_ms=clock(), error=request.query_params.get("error"),
                    archive=config.archive_dir is not None)

    async def claim_or_release(request: Request, action: str) -> Response:
        """Claim an item (the holder, or whoever already holds it, goes on to it) or release one's
        own claim (back to the queue); each change of hands is logged."""
        me = moderator_of(request)
        if not me:
            return login_redirect(request)
        if await form_with_csrf(request) is None:
            return bad_csrf(request)
        item = item_of(request)
        if item is None:
            return gone(request)
        changed = queue.claim(item, me) == me if action == "claim" else queue.release(item, me)
        if changed:
            log_action(client, {"action": action, "moderator_id": me, "kind": item.kind, "item": item.ref,
                                "incident_id": item.incident_id, "user_id": item.user_id, "time_ms": clock()})
        return RedirectResponse(f"/items/{item.ref}" if action == "claim" else "/", status_code=303)

    async def claim(request: Request) -> Response:
        return await claim_or_release(request, "claim")

    async def release(request: Request) -> Response:
        return await claim_or_release(request, "release")

    async def decide(request: Request) -> Response:
        me = moderator_of(request)
        if not me:
            return login_redirect(request)
        form = await form_with_csrf(request)
        if form is None:
            return bad_csrf(request)
        item = item_of(request)
        if item is None:
            return gone(request)
        verdict, note = str(form.get("verdict", "")), str(form.get("note", "")).strip()
        if verdict not in dict(VERDICTS[item.kind]):
            return RedirectResponse(f"/items/{item.ref}?error=choose+a+verdict", status_code=303)
        if not note or len(note) > MAX_NOTE:
            return RedirectResponse(f"/items/{item.ref}?error=a+note+of+1-{MAX_NOTE}+characters+is+required",
                                    status_code=303)
        holder = queue.claim(item, me)  # deciding claims a free item; someone else's claim stops it
        if holder != me:
            return page(request, "message.html", 409, title="Claimed by another moderator",
                        message=f"{holder} is deciding this item. Pick another one from the queue.")
        now = clock()
        record = make_decision(item.kind, verdict, item.user_id, item.incident_id, me, now, note)
        try:
            decisions.send(record)
        except Exception as exc:  # noqa: BLE001 - any producer failure: nothing is marked done
            return page(request, "message.html", 503, title="Not sent",
                        message=f"The decision could not be written ({exc}). Nothing was recorded; try again.")
        queue.done(item, {"action": "decide", "moderator_id": me, "kind": item.kind, "item": item.ref,
                          "incident_id": item.incident_id, "user_id": item.user_id, "verdict": verdict,
                          "decision_id": record["decision_id"], "note": note, "time_ms": now})
        return page(request, "message.html", title="Decision sent",
                    message=f"{item.kind.capitalize()} of {item.incident_id}: {verdict}. "
                            f"Decision {record['decision_id']} is on its way to the job.", back="/")

    async def users(request: Request) -> Response:
        me = moderator_of(request)
        if not me:
            return login_redirect(request)
        query = request.query_params.get("q", "").strip()
        user_id = request.path_params.get("user_id") or ""
        if query and not user_id:
            owner = desk.stream_owner(client, query)
            return RedirectResponse(f"/users/{owner or query}", status_code=303)
        view = desk.user_view(client, config.archive_dir, user_id, keyring) if user_id else None
        return page(request, "user.html", view=view, archive=config.archive_dir is not None)

    # ---- streamers ------------------------------------------------------------------------
    async def appeal(request: Request) -> Response:
        now = clock()
        if request.method == "GET":
            link = str(request.url)
            statement, error = "", None
        else:
            form = await form_with_csrf(request)
            if form is None:
                return bad_csrf(request)
            link, statement = str(form.get("link", "")), str(form.get("statement", ""))
            error = None
        try:
            checked = appeals.check(link, now)
        except AlreadyAppealed as exc:
            return page(request, "appeal_refused.html", 409, reason=str(exc))
        except AppealTokenError as exc:
            return page(request, "appeal_refused.html", 403, reason=_appeal_reason(exc))
        notice = appeals.notice(checked.user_id, checked.incident_id)
        status = desk.user_status(client, checked.user_id)
        violation = (notice or {}).get("subject", "").partition(": ")[2]
        if request.method == "POST":
            try:
                appeals.submit(link, statement, now, violation.replace(" ", "_"))
                return page(request, "appeal_done.html")
            except AlreadyAppealed as exc:
                return page(request, "appeal_refused.html", 409, reason=str(exc))
            except ValueError as exc:
                error = str(exc)
        return page(request, "appeal.html", 400 if error else 200, link=link, notice=notice, status=status,
                    incident_id=checked.incident_id, statement=statement, error=error)

    async def health(_: Request) -> Response:
        client.ping()
        return PlainTextResponse("ok")

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", queue_page),
        Route("/items/{priority}/{entry_id}", item_page),
        Route("/items/{priority}/{entry_id}/claim", claim, methods=["POST"]),
        Route("/items/{priority}/{entry_id}/release", release, methods=["POST"]),
        Route("/items/{priority}/{entry_id}/decide", decide, methods=["POST"]),
        Route("/users", users),
        Route("/users/{user_id}", users),
        Route("/appeal", appeal, methods=["GET", "POST"]),
        Route("/healthz", health),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=config.session_key, session_cookie="penalty_console",
                             max_age=config.session_max_age_s, same_site="lax", https_only=config.secure_cookies)]
    return Starlette(routes=routes, middleware=middleware)


def _appeal_reason(exc: AppealTokenError) -> str:
    text = str(exc)
    if "expired" in text:
        return "This appeal link has expired. Appeals are possible for 30 days after the penalty."
    return "This appeal link is not valid. Open the link exactly as it appears in your notification."
