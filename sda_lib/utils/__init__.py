"""sda_lib/utils"""
