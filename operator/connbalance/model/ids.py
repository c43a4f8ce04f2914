"""Names that must not be mixed up with one another or with plain strings."""

from typing import NewType

PodName = NewType("PodName", str)
PolicyName = NewType("PolicyName", str)
RequestId = NewType("RequestId", str)
