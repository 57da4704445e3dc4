"""Random and mutated frames into the real runner: it never dies, answers every complete frame with
a type-0 Err or a well-formed reply of the request's type, closes a connection on a frame cut short,
and keeps serving a healthy connection beside the fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.protocol import messages as m
from sidecar.protocol.frame import RPC_PREPARE_CONF
from tests._fuzz_inputs import MUTATIONS, corpus, mutate, random_frame, send_and_judge
from tests._runner_proc import Healthy, module_runners_fixture  # noqa: F401  (fixtures)

CORPUS = corpus()
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VALID_PREPARE = random_frame(RPC_PREPARE_CONF, m.encode_prepare_conf_req(
    m.PrepareConfReq(conf=[("say", '{"body":"after"}')], key="")))
_inputs = {"count": 0}


@pytest.fixture(scope="module")
def fuzzed(module_runners):
    """One runner for the whole module, with a healthy connection checked after every input."""
    runner = module_runners.start()
    healthy = Healthy(runner.path)
    yield runner, healthy
    healthy.check()
    assert runner.proc.poll() is None, runner.stderr()
    print(f"\nFIGURE fuzz inputs (frames) sent in make test: {_inputs['count']}, "
          f"healthy calls: {healthy.calls}")
    healthy.close()


def _judge(fuzzed, stream: bytes, frames: int) -> list[str]:
    runner, healthy = fuzzed
    answered = send_and_judge(runner.path, stream)
    _inputs["count"] += frames
    assert runner.proc.poll() is None, f"the runner died: {runner.stderr()[-2000:]}"
    healthy.check()
    return answered


frames_st = st.builds(
    random_frame,
    st.one_of(st.sampled_from([0, 1, 2, 3, 4]), st.integers(0, 255)),
    st.binary(max_size=1024),
)
mutation_st = st.tuples(
    st.sampled_from(MUTATIONS), st.integers(0, 1 << 16), st.integers(0, 1 << 16)
)


@st.composite
def mutated_st(draw, keep_length: bool = False) -> bytes:
    frame = draw(st.sampled_from(CORPUS))
    for op, pos, value in draw(st.lists(mutation_st, min_size=1, max_size=6)):
        frame = mutate(frame, op, pos, value, keep_length)
    return frame


@FUZZ
@given(frames=st.lists(frames_st, min_size=1, max_size=8))
def test_random_frames_each_get_an_answer_and_the_connection_stays_usable(fuzzed, frames):
    answered = _judge(fuzzed, b"".join(frames) + VALID_PREPARE, len(frames))
    assert answered[-1] == f"ok:{RPC_PREPARE_CONF}"


@FUZZ
@given(frames=st.lists(mutated_st(), min_size=1, max_size=8))
def test_mutated_apisix_frames_each_get_an_answer_and_the_connection_stays_usable(fuzzed, frames):
    answered = _judge(fuzzed, b"".join(frames) + VALID_PREPARE, len(frames))
    assert answered[-1] == f"ok:{RPC_PREPARE_CONF}"


@FUZZ
@given(frames=st.lists(st.one_of(mutated_st(keep_length=True), frames_st), min_size=1, max_size=6),
       cut=st.integers(0, 1 << 20))
def test_frames_with_lying_lengths_or_cut_short_get_answers_then_a_close(fuzzed, frames, cut):
    stream = b"".join(frames)
    _judge(fuzzed, stream[:cut % (len(stream) + 1)], len(frames))


def test_every_captured_frame_is_answered_as_its_type_allows(fuzzed):
    """The unmutated corpus: calls with tokens this runner never issued get CONF_TOKEN_NOT_FOUND,
    PrepareConf gets a token, ExtraInfo answers sent out of turn get BAD_REQUEST."""
    kinds = {}
    for frame in CORPUS:
        (kind,) = _judge(fuzzed, frame, 1)
        kinds.setdefault(frame[0], set()).add(kind)
    assert kinds[1] == {"ok:1"}
    assert kinds[2] == kinds[4] == {f"err:{m.ERR_CONF_TOKEN_NOT_FOUND}"}
    assert kinds.get(3, {f"err:{m.ERR_BAD_REQUEST}"}) == {f"err:{m.ERR_BAD_REQUEST}"}
