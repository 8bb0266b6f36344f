"""jobrund --bench: placeholder while the test is written."""
from jrtest import main
main([])
