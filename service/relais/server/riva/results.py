"""Pipeline events -> what Riva's clients expect back.

Recognition (StreamingRecognize, StreamingTranslateSpeechToText, Recognize): one
``StreamingRecognitionResult`` with ``is_final`` per utterance, carrying the whole
utterance's text (LiveKit ends the user's turn on it) followed by a space, as Riva's
transcripts are (clients concatenate them). While the utterance is open, each new
hypothesis gives an interim result: the committed words then the tentative ones, with
``stability`` the committed share of the words (committed words never change). Word
times, when asked for, are in milliseconds of source audio and approximate: Whisper
gives no word alignment, so the words committed together are spread, by length, over
the source time between the previous commit and theirs. ``confidence`` is not
estimated (0).

Speech (StreamingTranslateSpeechToSpeech): each spoken phrase as 16-bit PCM at the
requested rate, its text in ``meta.text``; an empty audio chunk after the last phrase of
each utterance marks the end of a sentence, and nothing is ever sent before the first
non-empty audio (NVIDIA's S2S script writes the first response's audio to a file it
opens only when that audio is not empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_tts_pb2 as rtts

from relais.audio.stream import OutputEncoder
from relais.pipeline.events import PipelineEvent, SpeechSegment, TextKind, TextSegment, UtteranceEnd
from relais.text import join_pieces

CHANNEL_TAG = 1  # Riva numbers channels from 1


@dataclass
class CommittedPiece:
    text: str
    start_s: float  # source time the words can start (the previous commit, or the utterance start)
    end_s: float  # source time they were committed at


@dataclass
class UtteranceText:
    pieces: list[CommittedPiece] = field(default_factory=list)
    tail: str = ""  # tentative words after the committed ones
    last_interim: str = ""

    @property
    def committed(self) -> str:
        return join_pieces(p.text for p in self.pieces)


class RecognitionResults:
    """One stream's text events -> StreamingRecognitionResults (interim only when asked for)."""

    def __init__(self, language_code: str, interim: bool, word_times: bool):
        self.language_code, self.interim, self.word_times = language_code, interim, word_times
        self.utterance = UtteranceText()

    def add(self, events: list[PipelineEvent]) -> list[rasr.StreamingRecognitionResult]:
        results = []
        for event in events:
            if isinstance(event, TextSegment) and event.kind is TextKind.TRANSLATION_FINAL:
                pieces = self.utterance.pieces
                start_s = pieces[-1].end_s if pieces else event.start_s
                pieces.append(CommittedPiece(event.text.strip(), min(start_s, event.end_s), event.end_s))
            elif isinstance(event, TextSegment) and event.kind is TextKind.TRANSLATION_PARTIAL:
                self.utterance.tail = event.text.strip()
                if self.interim and (result := self._interim(event.source_received_s)) is not None:
                    results.append(result)
            elif isinstance(event, UtteranceEnd):
                if self.utterance.pieces:
                    results.append(self._final(event))
                self.utterance = UtteranceText()
        return results

    def _interim(self, processed_s: float) -> rasr.StreamingRecognitionResult | None:
        utt = self.utterance
        committed, tail = utt.committed, utt.tail
        text = " ".join(t for t in (committed, tail) if t)
        if not text or text == utt.last_interim:
            return None
        utt.last_interim = text
        words, stable = len(text.split()), len(committed.split())
        return rasr.StreamingRecognitionResult(
            alternatives=[rasr.SpeechRecognitionAlternative(transcript=text, language_code=[self.language_code])],
            is_final=False, stability=stable / words, channel_tag=CHANNEL_TAG, audio_processed=processed_s)

    def _final(self, end: UtteranceEnd) -> rasr.StreamingRecognitionResult:
        pieces = self.utterance.pieces
        pieces[-1].end_s = max(pieces[-1].end_s, end.end_s)  # the last words run to the end of the speech
        alternative = rasr.SpeechRecognitionAlternative(transcript=self.utterance.committed + " ",
                                                        language_code=[self.language_code])
        if self.word_times:
            alternative.words.extend(word_infos(pieces, self.language_code))
        return rasr.StreamingRecognitionResult(alternatives=[alternative], is_final=True, channel_tag=CHANNEL_TAG,
                                               audio_processed=end.source_received_s)


def word_infos(pieces: list[CommittedPiece], language_code: str) -> list[rasr.WordInfo]:
    """Approximate word times (ms): each piece's words share its span in proportion to their length."""
    infos = []
    for piece in pieces:
        words = piece.text.split()
        total = sum(len(w) for w in words) or 1
        at, span = piece.start_s, max(piece.end_s - piece.start_s, 0.0)
        for word in words:
            end = at + span * len(word) / total
            infos.append(rasr.WordInfo(word=word, start_time=round(at * 1000), end_time=round(end * 1000),
                                       language_code=language_code))
            at = end
    return infos


def recognize_response(results: list[rasr.StreamingRecognitionResult]) -> rasr.RecognizeResponse:
    """Recognize's answer: the final results of the whole file, one per utterance."""
    return rasr.RecognizeResponse(results=[
        rasr.SpeechRecognitionResult(alternatives=r.alternatives, channel_tag=r.channel_tag,
                                     audio_processed=r.audio_processed) for r in results if r.is_final])


class SpeechResponses:
    """One S2S stream's speech events -> SynthesizeSpeechResponses (audio at the encoder's rate)."""

    def __init__(self, encoder: OutputEncoder):
        self.encoder = encoder
        self.sent_audio = False  # no empty chunk may come first
        self.utterance_spoken = False
        self.utterance_ended = False

    def add(self, events: list[PipelineEvent]) -> list[rtts.SynthesizeSpeechResponse]:
        """An utterance's last phrase follows its UtteranceEnd (the speaker runs after the recogniser's
        window), in the same batch or, as committed text is sent before it is spoken, in the next one:
        the sentence ends at the first other event after that speech, or with a batch that has it."""
        out = []
        for event in events:
            if isinstance(event, SpeechSegment):
                data = self.encoder.encode(event.audio, event.sample_rate_hz)
                if data:
                    out.append(rtts.SynthesizeSpeechResponse(
                        audio=data, meta=rtts.SynthesizeSpeechResponseMetadata(text=event.text)))
                    self.sent_audio = self.utterance_spoken = True
                continue
            out += self._sentence_end()
            self.utterance_ended = isinstance(event, UtteranceEnd)
        if events and isinstance(events[-1], UtteranceEnd):
            return out  # its speech comes in the next batch
        return out + self._sentence_end()

    def _sentence_end(self) -> list[rtts.SynthesizeSpeechResponse]:
        ended, self.utterance_ended = self.utterance_ended, False
        if not (ended and self.utterance_spoken and self.sent_audio):
            return []
        self.utterance_spoken = False
        return [rtts.SynthesizeSpeechResponse(audio=b"")]
