"""Errors that cross process boundaries keep their one sentence."""
import pickle

from masktwins_bio.errors import InputError, InputGone


def test_a_vanished_input_survives_pickling_and_torchs_worker_reraise():
    err = InputGone(FileNotFoundError(2, "No such file or directory"), "/data/s07.png")
    back = pickle.loads(pickle.dumps(err))  # from a process pool
    assert str(back) == str(err) == ("Cannot read '/data/s07.png' (No such file or directory); "
                                     "put the input back or make it readable.")
    assert isinstance(back, OSError) and back.errno == 2 and back.filename == "/data/s07.png"
    # torch re-raises a DataLoader worker's error as type(err)(text): it must not fail (it
    # then raises a RuntimeError, which the CLI shows as a traceback)
    text = ("Caught InputGone in DataLoader worker process 0.\n"
            f"masktwins_bio.errors.InputGone: {err}")
    rebuilt = InputGone(text)
    assert isinstance(rebuilt, InputError) and str(rebuilt) == text
