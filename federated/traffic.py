"""What crosses the wire in training: a Grid that passes every call through
and counts, per round, the serialized bytes of training messages each way and how many
replies carried an adapter the server could read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.supercore.run import Run
from flwr.common.serde import recorddict_to_proto
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid


def size(content: RecordDict) -> int:
    """The content's bytes as the wire carries them."""
    return recorddict_to_proto(content).ByteSize()


def round_of(message: Message) -> int:
    """Flower's legacy workflows name the round in the group id; the message
    strategies put it in the train config."""
    if message.metadata.group_id.isdigit():
        return int(message.metadata.group_id)
    return int(message.content.config_records.get("config", {}).get("server-round", 0))


class CountingGrid(Grid):
    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.bytes_down: Counter[int] = Counter()
        self.bytes_up: Counter[int] = Counter()
        self.readable_updates: Counter[int] = Counter()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if train:  # one call carries one round's stage
            r = round_of(train[0])
            self.bytes_down[r] += sum(size(m.content) for m in train)
            answered = [m.content for m in replies if m.has_content()]
            self.bytes_up[r] += sum(size(c) for c in answered)
            self.readable_updates[r] += sum(any(len(a) for a in c.array_records.values()) for c in answered)
        return replies

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)
