"""Text-conditioned synthesis (§7.2): captioned scenes of coloured shapes and their checker.

from minigen.synthesis import generate, caption_scenes, score_batch
scenes = generate(64, seed=0)                       # images (64, 3, 16, 16) in [0, 1]
data = caption_scenes(scenes)                       # captions, tokens, properties
score_batch(data.images, data.captions)             # picoclvr score per image: all 1.0

clip = train_clip().model                           # CLIP, noise-aware (~5 min on 2 cores)
g = clip_grad(clip, x_t, t, "a red circle")         # grad_x (z_img(x_t, t) . z_txt)

x = Text2Im().sample("a red circle above a blue square", 8, method="clip")  # shipped models
"""

from minigen.synthesis.caption_unet import CaptionUNet
from minigen.synthesis.captions import (
    BOS,
    EOS,
    MAX_LEN,
    PAD,
    RELATIONS,
    VOCAB,
    CaptionedScenes,
    Exists,
    Property,
    Relation,
    Split,
    Thing,
    caption_scenes,
    decode,
    describe,
    encode,
    encode_batch,
    make_split,
    parse_caption,
)
from minigen.synthesis.checker import Detection, Score, parse, parse_batch, score, score_batch
from minigen.synthesis.clip import (
    CLIP,
    CLIPConfig,
    caption_key,
    contrastive_loss,
    positives,
)
from minigen.synthesis.clip_train import (
    TrainResult,
    describes,
    in_distribution_scenes,
    load_clip,
    minimal_edits,
    plot_similarity,
    retrieval_accuracy,
    save_clip,
    similarity,
    train_clip,
    training_data,
)
from minigen.synthesis.guidance import (
    cfg_eps,
    clip_grad,
    clip_guided_eps,
    clip_guided_mean,
    guided_step,
)
from minigen.synthesis.sampling import (
    DEFAULT_SCALE,
    METHODS,
    Text2Im,
    plot_samples,
    plot_side_by_side,
)
from minigen.synthesis.scenes import (
    COLOURS,
    SHAPES,
    SceneObject,
    Scenes,
    from_objects,
    generate,
    plot_grid,
)
from minigen.synthesis.text2im import caption_dropout, scene_data, train_text2im
from minigen.synthesis.text2im_config import Text2ImConfig, Text2ImResult
from minigen.synthesis.text2im_io import CondModel, load_cond, load_scenes, save_text2im
from minigen.synthesis.xunet import Caption, CrossAttnUNet

# the package's names: its modules' __all__ lists again (other parts import only from here)
__all__ = [
    "COLOURS",
    "SHAPES",
    "RELATIONS",
    "VOCAB",
    "PAD",
    "BOS",
    "EOS",
    "MAX_LEN",
    "SceneObject",
    "Scenes",
    "generate",
    "from_objects",
    "plot_grid",
    "Thing",
    "Exists",
    "Relation",
    "Property",
    "describe",
    "parse_caption",
    "encode",
    "encode_batch",
    "decode",
    "CaptionedScenes",
    "caption_scenes",
    "Split",
    "make_split",
    "Detection",
    "Score",
    "parse",
    "parse_batch",
    "score",
    "score_batch",
    "CLIP",
    "CLIPConfig",
    "caption_key",
    "positives",
    "contrastive_loss",
    "clip_grad",
    "clip_guided_mean",
    "clip_guided_eps",
    "cfg_eps",
    "guided_step",
    "CaptionUNet",
    "Caption",
    "CrossAttnUNet",
    "CondModel",
    "Text2ImConfig",
    "Text2ImResult",
    "caption_dropout",
    "scene_data",
    "train_text2im",
    "save_text2im",
    "load_scenes",
    "load_cond",
    "Text2Im",
    "METHODS",
    "DEFAULT_SCALE",
    "plot_samples",
    "plot_side_by_side",
    "TrainResult",
    "training_data",
    "train_clip",
    "save_clip",
    "load_clip",
    "similarity",
    "describes",
    "minimal_edits",
    "retrieval_accuracy",
    "in_distribution_scenes",
    "plot_similarity",
]
