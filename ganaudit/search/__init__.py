"""Search: training-set indexes, copy search under test-time augmentations, calibration.

- :mod:`~ganaudit.search.index`: exact FAISS search in blocks (the :class:`SearchIndex` base
  and :class:`FlatIndex`), :func:`~ganaudit.search.index.build_index`;
  :mod:`~ganaudit.search.approximate`: IVF and HNSW with measured recall;
  :mod:`~ganaudit.search.index_cache`: approximate indexes kept between runs.
- :mod:`~ganaudit.search.augment`: the variants of an image under which a copy is a copy.
- :mod:`~ganaudit.search.copy_search`: embed a batch's variants, search, keep each image's
  best match (:class:`Matches`).
- :mod:`~ganaudit.search.calibration`: reference scores of images known not to be copies,
  and the threshold policy that turns scores into flags.
"""
