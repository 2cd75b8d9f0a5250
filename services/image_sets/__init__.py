"""image_sets"""
