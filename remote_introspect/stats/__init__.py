"""Statistics: exact intervals, net detection, null bounds and κ (`analysis`), the
identification/coherence crossover (`crossover`), and the one definition of cells, their rates and
Merrill's pre-registered test that the summary, report, audit and export share (`cells`)."""
