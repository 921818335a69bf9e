"""Row sources: an embedding matrix ``[N, D]`` read block by block, validated and normalized.

A source hides where the rows live.  An in-memory array is validated and (optionally) normalized
once into one float32 copy; a memory-mapped ``np.memmap``, a path to a ``.npy`` file, or any
other array-like with ``.shape`` and row slicing (h5py/zarr datasets) is streamed: a validation
pass reads it once in blocks, and later every block is read (and normalized) again when needed,
so the whole matrix is never held in memory.  A ``.npy`` path is read with plain file reads, not
a memory map, so the pages read do not count towards the process's resident memory.
"""

import os

import numpy as np

# Rows per block of the validation pass over a streamed source.
_SCAN_ROWS = 8192


def lipschitz_normalize(x, out=None):
    """SPEC §2 forward pass, ``n(x) = x / max(||x||, 1)`` per row: ``[N, D] -> [N, D]`` float32
    (written into ``out`` when given).  Norms are accumulated in float64; no gradient is needed
    at evaluation time."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    scale = np.maximum(norms, 1.0).astype(np.float32)
    return np.divide(x, scale[:, None], out=out)


def _check_block(x, name, start):
    """Validates a float block (finite values); ``start`` is its first row, for the message."""
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(
            f"{name} contains NaN or infinite values (first in row {start + int(bad[0])}, "
            f"{len(bad)} such rows in rows {start}..{start + len(x) - 1})"
        )


def _check_dtype(dtype, name):
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise TypeError(f"{name} must be a real-valued array; got dtype {dtype}")


def _check_shape(shape, name):
    if len(shape) != 2:
        raise ValueError(f"{name} must have shape [N, D]; got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(shape)}); at least one embedding is needed"
        )
    if shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions (shape {tuple(shape)})")


class _NpyFile:
    """Row slicing of a C-ordered ``.npy`` file with ``os.pread`` (no memory map)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if fortran and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
            raise ValueError(
                f"{self.path}: Fortran-ordered .npy files cannot be read by rows; save the "
                f"embeddings C-ordered (np.save(path, np.ascontiguousarray(x)))"
            )
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        row_bytes = self.shape[1] * self.dtype.itemsize
        out = np.empty((max(stop - start, 0), self.shape[1]), self.dtype)
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):
            read = os.preadv(self._fd, [view[done:]], self.offset + start * row_bytes + done)
            if read <= 0:
                raise ValueError(f"{self.path}: file is shorter than its header says")
            done += read
        return out

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _is_streamed(x):
    return isinstance(x, (str, os.PathLike, np.memmap)) or (
        not isinstance(x, np.ndarray) and hasattr(x, "shape") and hasattr(x, "__getitem__")
        and hasattr(x, "dtype") and not _is_tensor(x)
    )


def _is_tensor(x):
    return type(x).__module__.startswith(("tensorflow", "keras", "torch", "jax"))


class RowSource:
    """``[N, D]`` embeddings as normalized float32 row blocks.

    Attributes:
      num_rows, dim: N and D.
      sq_norms: float64 ``[N]`` squared norms of the (normalized) float32 rows.
      resident: whether the rows are held in memory (``rows`` is then the ``[N, D]`` array,
        a view into the augmented reference form).
    """

    def __init__(self, data, name, normalize):
        self.name, self.normalize = name, normalize
        self._file = None
        if _is_streamed(data):
            if isinstance(data, (str, os.PathLike)):
                if not os.path.isfile(data):
                    raise ValueError(f"{name}: no such .npy file: {os.fspath(data)}")
                data = self._file = _NpyFile(data)
            self._data, self.resident, self.rows = data, False, None
            shape, dtype = tuple(data.shape), np.dtype(data.dtype)
            _check_shape(shape, name)
            _check_dtype(dtype, name)
            self.num_rows, self.dim = int(shape[0]), int(shape[1])
            self.sq_norms = np.empty(self.num_rows, np.float64)
            for start in range(0, self.num_rows, _SCAN_ROWS):
                block = self.block(start, min(start + _SCAN_ROWS, self.num_rows))
                self.sq_norms[start:start + len(block)] = np.einsum(
                    "ij,ij->i", block, block, dtype=np.float64)
            self._check_norms()
        else:
            x = np.asarray(data)
            _check_shape(x.shape, name)
            _check_dtype(x.dtype, name)
            x = np.asarray(x, dtype=np.float32)
            _check_block(x, name, 0)
            self.num_rows, self.dim = x.shape
            # One buffer: the normalized rows plus the two augmented coordinates of the
            # reference form (see ``augmented``); no other full-size copy is made.
            self._augmented = np.empty((self.num_rows, self.dim + 2), np.float32)
            body = self._augmented[:, :-2]
            if normalize:
                lipschitz_normalize(x, out=body)
            else:
                body[...] = x
            self._data, self.resident, self.rows = None, True, body
            self.sq_norms = np.einsum("ij,ij->i", body, body, dtype=np.float64)
            self._check_norms()
            self._augmented[:, -2] = 1.0
            self._augmented[:, -1] = -0.5 * self.sq_norms

    def _check_norms(self):
        if np.any(self.sq_norms > np.finfo(np.float32).max):
            raise ValueError(
                f"squared norms of {self.name} overflow float32; rescale the embeddings or "
                "use normalize=True"
            )

    def block(self, start, stop):
        """Rows ``start:stop`` -> float32 ``[stop - start, D]``, validated and normalized."""
        if self.resident:
            return self.rows[start:stop]
        # A copy: slicing a memmap or an array-like may return a (read-only) view of its data.
        x = np.array(self._data[start:stop], dtype=np.float32, order="C")
        _check_block(x, self.name, start)
        return lipschitz_normalize(x, out=x) if self.normalize else x

    def take(self, index):
        """Rows at ``index`` (int array ``[n]``, any order) -> float32 ``[n, D]``."""
        if self.resident:
            return self.rows[index]
        unique, inverse = np.unique(index, return_inverse=True)
        out = np.empty((len(unique), self.dim), np.float32)
        # Runs of consecutive rows are read as one slice.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for run in np.split(np.arange(len(unique)), breaks):
            if len(run):
                out[run] = self.block(int(unique[run[0]]), int(unique[run[-1]]) + 1)
        return out[inverse]

    def augmented(self, start, stop, as_query):
        """Rows ``start:stop`` as float32 ``[n, D + 2]``: ``[x, -|x|^2/2, 1]`` for queries,
        ``[x, 1, -|x|^2/2]`` for references, so that one matmul gives ``-||q - r||^2 / 2``."""
        if self.resident and not as_query:
            return self._augmented[start:stop]
        x = self.block(start, stop)
        out = np.empty((len(x), self.dim + 2), np.float32)
        out[:, :-2] = x
        half = -0.5 * self.sq_norms[start:stop]
        out[:, -2], out[:, -1] = (half, 1.0) if as_query else (1.0, half)
        return out

    def close(self):
        if self._file is not None:
            self._file.close()
