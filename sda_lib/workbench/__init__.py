"""sda_lib/workbench"""
