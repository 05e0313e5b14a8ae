"""Persist and measure a pruned model (see ARCHITECTURE.md, stage "export")."""
from .exporter import deploy_config, export_pruned_model
from .profile import (count_macs_params, format_profile, machine_description, measure_latencies,
                      profile_backbones, stage_channels, time_in_turns, timing_spread)

__all__ = ['deploy_config', 'export_pruned_model', 'count_macs_params', 'measure_latencies',
           'profile_backbones', 'stage_channels', 'format_profile', 'machine_description', 'time_in_turns',
           'timing_spread']
