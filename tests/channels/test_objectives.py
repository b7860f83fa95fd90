"""The local objective's defaults (greedyprune.channels.objectives) by closed form: the calibration set is as many
examples as one dense forward of CALIBRATION_MACS multiply-adds allows, between 32 and MAX_CALIBRATION."""
from greedyprune.channels.objectives import CALIBRATION_MACS, MAX_CALIBRATION, calibration_size


def test_calibration_size_spends_its_budget_between_32_and_the_cap():
    assert calibration_size(100, 1e9) == 100  # asked: used as given
    assert calibration_size(None, 385e6) == int(150e9 // 385e6) == 389  # EfficientNet-Lite0 on 224 x 224
    assert calibration_size(None, CALIBRATION_MACS) == 32  # a huge network: the floor
    assert calibration_size(None, 1e6) == MAX_CALIBRATION == 4096  # a tiny one: the cap
    assert calibration_size(None, 0) == MAX_CALIBRATION
