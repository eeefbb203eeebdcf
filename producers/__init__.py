"""tierstream.producers"""
