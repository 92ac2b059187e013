"""vlpeft's procedural world: generated images, captions and downstream datasets (offline).

Importing this package registers the world datasets (``WorldShapes``, ...).
"""

from vlpeft.world.datasets import FEW_SHOT_SETS, SHIFT_SETS, WORLD_SETS, generate_world, world_set
from vlpeft.world.render import Obj, Scene, render
from vlpeft.world.scenes import pretrain_pair

__all__ = [
    "FEW_SHOT_SETS",
    "SHIFT_SETS",
    "WORLD_SETS",
    "Obj",
    "Scene",
    "generate_world",
    "pretrain_pair",
    "render",
    "world_set",
]
