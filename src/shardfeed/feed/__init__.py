"""Feed: epoch orders, batches, buffers and the adapters that hand them to training (Keras, tf.data).

The only wing that imports Keras or TensorFlow (besides the benchmark), and only in the modules that need them.
"""
