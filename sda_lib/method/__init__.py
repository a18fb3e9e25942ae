"""sda_lib/method"""
