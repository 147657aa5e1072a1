"""Claiming a conversation (`agentmem.claim`): live, resumed, new or branch, the one decision every surface uses."""

from __future__ import annotations

import pytest

from agentmem.claim import branch_id, claim, is_current
from agentmem.engine import Session
from agentmem.errors import ConfigError, ModelMismatchError, SessionNotFoundError
from agentmem.models import model_fingerprint
from agentmem.store import Store

from conftest import tiny_chat_gemma3, tiny_chat_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def pair():
    return tiny_chat_llama(seed=0), tiny_tokenizer()


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "claim.db")
    yield store
    store.close()


def stored(store, model, tokenizer, session_id: str, *texts: str) -> Session:
    """A stored session `session_id` holding user messages `texts`, each answered and committed."""
    store.create_session(model="tiny", fingerprint=model_fingerprint(model), session_id=session_id)
    session = Session(model, tokenizer, store=store, session_id=session_id, policy="off")
    for text in texts:
        session.add("user", text)
        session.generate(2)
    return session


def users(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def prefix_of(*wanted: str):
    """A `fits` that keeps sessions whose user messages start `wanted` (how many they hold)."""
    def fits(messages):
        held = users(messages)
        return len(held) if list(wanted[:len(held)]) == held else None
    return fits


class Created:
    """A `create` that records what it was asked for."""

    def __init__(self, pair):
        self.pair, self.calls = pair, []

    def __call__(self, session_id, origin):
        self.calls.append((session_id, origin))
        return Session(*self.pair, session_id=session_id, policy="off")


# --------------------------------------------------------------------------- pieces
def test_a_session_is_current_until_another_writer_commits(pair, store):
    assert is_current(Session(*pair, policy="off"))  # nothing stored: nothing newer can exist
    first = stored(store, *pair, "c", "one")
    assert is_current(first)
    second = Session.resume(store, "c", *pair)
    second.add("user", "two")
    second.generate(2)
    assert is_current(second) and not is_current(first)
    store.delete_session("c")
    assert not is_current(second)


def test_branch_ids_count_up_from_two():
    assert branch_id(None, {"x"}) is None and branch_id("c", set()) == "c"
    assert branch_id("c", {"c"}) == "c/2" and branch_id("c", {"c", "c/2", "c/3"}) == "c/4"


# --------------------------------------------------------------------------- the decision
def test_the_live_session_that_fits_most_wins(pair, store):
    short, longer = Session(*pair, policy="off", session_id="a"), Session(*pair, policy="off", session_id="b")
    short.add("user", "one")
    longer.add("user", "one")
    longer.add("user", "two")
    create = Created(pair)
    got = claim(*pair, create=create, session_id="c", live=[short, longer], fits=prefix_of("one", "two", "three"))
    assert got.origin == "live" and got.session is longer and create.calls == []
    got = claim(*pair, create=create, session_id="c", live=[short, longer], fits=prefix_of("one", "other"))
    assert got.session is short


def test_a_stale_live_copy_gives_way_to_the_store(pair, store):
    stale = stored(store, *pair, "c", "one")
    newer = Session.resume(store, "c", *pair)
    newer.add("user", "two")
    newer.generate(2)
    got = claim(*pair, create=Created(pair), store=store, session_id="c", live=[stale])
    assert got.origin == "resumed" and got.session is not stale and users(got.session.messages) == ["one", "two"]


def test_a_stored_session_that_fits_is_resumed_with_its_cache(pair, store):
    stored(store, *pair, "c", "one")
    got = claim(*pair, create=Created(pair), store=store, session_id="c", fits=prefix_of("one", "two"))
    assert got.origin == "resumed" and got.session.id == "c" and got.session.cached > 0


def test_a_conversation_that_does_not_fit_branches(pair, store):
    stored(store, *pair, "c", "one")
    create = Created(pair)
    got = claim(*pair, create=create, store=store, session_id="c", fits=prefix_of("other"), branches=True)
    assert got.origin == "branch" and create.calls == [("c/2", "branch")]
    got = claim(*pair, create=create, store=store, session_id="c", fits=prefix_of("other"), branches=True,
                taken={"c/2"})
    assert create.calls[-1] == ("c/3", "branch")
    got = claim(*pair, create=create, store=store, session_id="fresh", branches=True)
    assert got.origin == "new" and create.calls[-1] == ("fresh", "new")
    got = claim(*pair, create=create)
    assert got.origin == "new" and create.calls[-1] == (None, "new")


def test_another_models_session_is_passed_over_between_branches_and_refused_by_name(pair, store):
    gemma = tiny_chat_gemma3(seed=0)
    stored(store, gemma, pair[1], "c", "one")
    create = Created(pair)
    got = claim(*pair, create=create, store=store, session_id="c", branches=True)
    assert got.origin == "branch" and create.calls == [("c/2", "branch")]
    with pytest.raises(ModelMismatchError):
        claim(*pair, create=create, store=store, session_id="c")


def test_without_create_the_named_session_must_exist(pair, store):
    with pytest.raises(SessionNotFoundError):
        claim(*pair, create=None, store=store, session_id="missing")
    with pytest.raises(ConfigError, match="a store and a session_id are needed"):
        claim(*pair, create=None, session_id="c")
    stored(store, *pair, "c", "one")
    assert claim(*pair, create=None, store=store, session_id="c").origin == "resumed"
