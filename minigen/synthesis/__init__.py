"""Text-conditioned synthesis (§7.2): captioned scenes of coloured shapes and their checker."""

from minigen.synthesis.scenes import (
    COLOURS,
    SHAPES,
    SceneObject,
    Scenes,
    from_objects,
    generate,
    plot_grid,
)

__all__ = ["COLOURS", "SHAPES", "SceneObject", "Scenes", "generate", "from_objects", "plot_grid"]
