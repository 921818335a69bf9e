"""Image transforms of SPEC §6 (TensorFlow ops, traceable inside tf.data).

Train: random-resized crop (16%-100% of the area, aspect ratio 3/4-4/3) resized bilinearly to
`image_size`, then a random horizontal flip. Eval: resize the shorter side to `resize_size`
(default round(image_size * 256 / 227), i.e. 256 for 227), center crop `image_size`.
All randomness is stateless: a transform is a pure function of its image and its seed [2].
Outputs are float32 RGB in [0, 255] (the ccp models normalize their own inputs).
"""
import tensorflow as tf

ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_CROP_ATTEMPTS = 10

def default_resize_size(image_size):
    """Shorter side before the eval center crop: 256 for 227 (SPEC §6), scaled for others."""
    return int(round(image_size * 256.0 / 227.0))


def split_seed(seed, num):
    """`num` independent stateless seeds (int64 [num, 2]) derived from one seed [2]."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num)


def crop_window(image_shape, seed, min_area=0.16, aspect_ratio_range=ASPECT_RATIO_RANGE):
    """A random crop window of the random-resized crop.

    Args:
      image_shape: int [3] or [2], (height, width[, channels]) of the full image.
      seed: int [2] stateless seed.
      min_area: smallest crop area as a fraction of the image area (largest: 1.0).
      aspect_ratio_range: (min, max) crop width / height.
    Returns:
      int32 [4] (offset_y, offset_x, crop_height, crop_width). When no window satisfying the
      constraints is found in 10 attempts, the whole image.
    """
    shape = tf.cast(tf.convert_to_tensor(image_shape)[:2], tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], axis=0),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=tf.cast(seed, tf.int64),
        min_object_covered=min_area,
        aspect_ratio_range=aspect_ratio_range,
        area_range=(min_area, 1.0),
        max_attempts=MAX_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _finish_train(crop, seed, image_size, flip):
    image = tf.image.resize(crop, [image_size, image_size], method="bilinear")
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([image_size, image_size, 3])
    return image


def train_transform(image, seed, image_size=227, min_area=0.16, flip=True):
    """Random-resized crop + flip of a decoded image.

    Args:
      image: uint8 (or float) [H, W, 3].
      seed: int [2] stateless seed; equal seeds give equal outputs.
    Returns:
      float32 [image_size, image_size, 3] RGB in [0, 255].
    """
    seeds = split_seed(seed, 2)
    window = crop_window(tf.shape(image), seeds[0], min_area)
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])
    return _finish_train(crop, seeds[1], image_size, flip)


def train_transform_encoded(contents, seed, image_size=227, min_area=0.16, flip=True):
    """:func:`train_transform` of an encoded image (scalar string), same seed use.

    JPEG files decode only the crop window (tf.image.decode_and_crop_jpeg); other formats are
    decoded whole and cropped.
    """
    seeds = split_seed(seed, 2)

    def jpeg():
        window = crop_window(tf.image.extract_jpeg_shape(contents), seeds[0], min_area)
        return tf.image.decode_and_crop_jpeg(contents, window, channels=3)

    def other():
        image = decode(contents)
        window = crop_window(tf.shape(image), seeds[0], min_area)
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    crop = tf.cond(is_jpeg(contents), jpeg, other)
    crop.set_shape([None, None, 3])
    return _finish_train(crop, seeds[1], image_size, flip)


def eval_transform(image, image_size=227, resize_size=None):
    """Resize the shorter side to `resize_size` (bilinear), center crop `image_size`.

    Args:
      image: uint8 (or float) [H, W, 3].
      resize_size: int >= image_size; None = round(image_size * 256 / 227).
    Returns:
      float32 [image_size, image_size, 3] RGB in [0, 255].
    """
    resize_size = default_resize_size(image_size) if resize_size is None else int(resize_size)
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), resize_size)
    resized = tf.image.resize(image, new_shape, method="bilinear")
    top = (new_shape[0] - image_size) // 2
    left = (new_shape[1] - image_size) // 2
    crop = tf.slice(resized, [top, left, 0], [image_size, image_size, 3])
    crop = tf.clip_by_value(crop, 0.0, 255.0)
    crop.set_shape([image_size, image_size, 3])
    return crop


def is_jpeg(contents):
    """bool scalar: the encoded bytes start with the JPEG SOI marker."""
    return tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")


def decode(contents):
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (grayscale/alpha -> RGB)."""
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image
