"""Studies: grids whose `kind` is not "sampling". The harness calls `bench.studies.<kind>:run(grid, results_dir)`,
which writes its tidy results under <results_dir>/studies/ (read by `python -m bench report`)."""
