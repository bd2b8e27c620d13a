"""The sweep report: tables, paired tests and figures of a sweep in one markdown page
(`python -m tsynd_tf.report`; its usage and flags are in `__main__`).

Modules (this package imports none of them; only `model_figures` imports TensorFlow when
imported):
  records        the results lines, `Config` (a config's cells), run and machine facts
  stats          mean ± std, paired t-test and Wilcoxon, detectable difference, Holm,
                 normalised areas, p-value formatting
  tables         the markdown sections: header, claims, overview, settings, per config, ...
  robust_tables  per config: robustness areas per attack family, corruption errors
  figures        figures of the records: ACC/AUC vs labelled fraction, robustness
  model_figures  figures of one seed's models: MI histograms, synthetic grid, Grad-CAM
  pools_figure   per config, the round-0 pool of every generating method as class grids
  page           the page in order, written with its figures (and to TensorBoard)
  __main__       the command and its flags
"""
